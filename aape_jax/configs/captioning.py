"""The captioning config (task "captioning", aape_jax.captioning.train) its experiment files share.

Arguments (comma-separated `key=value`, `ARGS`): method (aape|limber), dataset (synthetic|coco),
image_input (pooled|grid), aggregator (attention|mean|random|mlp), seed, runlocal. The choices made
where the papers are silent are listed in experiments/aape_captioning.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from aape_jax.configs import trainer
from aape_jax.configs.args import Arg, parse_arg
from aape_jax.configs.retrieval import data_spec

ARGS: dict[str, Arg] = {"method": "aape", "dataset": "", "image_input": "pooled", "aggregator": "attention",
                        "seed": 1, "runlocal": False}
EVAL_NAMES = {"synthetic": "synthetic_test", "coco": "coco_karpathy_test"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The captioning config for `arg` (any of ARGS)."""
    return build(parse_arg(arg, **ARGS))


def add_language_model(config: ml_collections.ConfigDict, runlocal: bool) -> None:
    """`config.lm` and its dtypes; `config.random_lm_family` for runs without one."""
    # Frozen decoder: an HF-format directory or hub id (aape_jax.lm). Empty: a random tiny decoder of
    # `random_lm_family` written to WORKDIR/random_lm (for a gs:// workdir: this machine's cache).
    config.lm = "" if runlocal else "EleutherAI/gpt-j-6b"  # LiMBeR's language model
    config.random_lm_family = "gptj"  # gpt2 | gptj | llama | mistral | qwen2 (only when `lm` is empty)
    config.lm_dtype = "float32" if runlocal else "bfloat16"  # compute dtype of the decoder
    config.lm_param_dtype = "float32" if runlocal else "bfloat16"  # GPT-J's 6B parameters: 12 GB in bf16


def add_maps(config: ml_collections.ConfigDict, method: str, image_input: str, aggregator: str,
             runlocal: bool) -> None:
    """`config.method`, `config.model` (AAPE's modules and the maps) and `config.loss`."""
    config.method = method  # "aape" (LiMBeR's map + AAPE tokens) | "limber" (the map alone)
    trainer.add_aape(config, aggregator=aggregator, runlocal=runlocal)
    # "pooled": CLIP's projected feature -> num_image_tokens soft tokens; "grid": the ViT's last-block
    # patch tokens, one soft token each (LiMBeR maps its 12x12 RN50x16 grid cell by cell).
    config.model.image_input = image_input
    config.model.num_image_tokens = 4 if image_input == "pooled" else 0  # k ("grid": one per patch)
    config.model.num_aape_tokens = 1  # m, soft tokens of the AAPE after the image tokens (aape only)


def build(args: Mapping[str, Arg], **fixed: Arg) -> ml_collections.ConfigDict:
    """The captioning config for the ARGS values in `args`, overridden by `fixed`."""
    values = {**ARGS, **{k: args[k] for k in args if k in ARGS}, **fixed}
    runlocal = bool(values["runlocal"])
    dataset = str(values["dataset"]) or ("synthetic" if runlocal else "coco")
    config = ml_collections.ConfigDict()
    config.task = "captioning"  # dispatched by aape_jax.main to aape_jax.captioning.train

    trainer.add_frozen_clip(config, "" if runlocal else "openai/clip-vit-base-patch16")
    add_language_model(config, runlocal)

    # Training data: every image with its human captions (targets, and AAPE's prompts).
    config.dataset = data_spec(dataset, "train", runlocal=runlocal)
    config.dataset.num_views = 1  # image features per training image (LiMBeR trains without augmentation)
    config.dataset.augment = False  # random crops/flips for the views (True needs num_views >= 1)

    # Evaluation sets {name: data spec}; NoCaps (name "nocaps") reports in/near/out-domain too.
    config.eval = ml_collections.ConfigDict()
    config.eval[EVAL_NAMES[dataset]] = data_spec(dataset, "test", runlocal=runlocal)
    if not runlocal:
        config.eval.nocaps_val = data_spec("nocaps", "val")
        config.eval.nocaps_val.annotations = ""  # nocaps_val_4500_captions.json (empty: ROOT/<that name>)
    config.eval_primary = EVAL_NAMES[dataset]  # whose metrics also go unprefixed into metrics.json
    config.eval_batch_size = 64 if not runlocal else 20  # images per generation batch
    # BLEU-4, METEOR and CIDEr-D through pycocoevalcap (PTB tokens; Java). False: CIDEr-D alone, by our
    # own scorer on a simple tokenisation (no Java).
    config.coco_metrics = True

    add_maps(config, str(values["method"]), str(values["image_input"]), str(values["aggregator"]), runlocal)
    # aape only: train and evaluate the LiMBeR baseline in the same harness (WORKDIR/limber), its
    # metrics beside AAPE's with the prefix `limber_`.
    config.compare_limber = config.method == "aape"

    config.prompt = "A picture of"  # LiMBeR's caption prompt, after the soft tokens
    config.max_caption_tokens = 40  # longer captions are cut (counted in the log); with EOS: 41 targets
    config.decoding = ml_collections.ConfigDict()
    config.decoding.method = "beam" if not runlocal else "greedy"  # greedy | beam
    config.decoding.num_beams = 3
    config.decoding.length_penalty = 1.0
    config.decoding.max_new_tokens = 20 if not runlocal else 12

    trainer.add_training(config, optimizer="adamw", learning_rate=5e-4 if not runlocal else 3e-3,
                         weight_decay=1e-4, warmup_lr=1e-6, batch_size=64 if not runlocal else 16,
                         num_epochs=3 if not runlocal else 6, seed=int(values["seed"]))
    return config
