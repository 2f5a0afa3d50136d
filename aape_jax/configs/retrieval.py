"""The image-text retrieval config (task "retrieval", aape_jax.retrieval.train) its experiment files share.

Arguments (comma-separated `key=value`, `ARGS`): dataset (synthetic|coco|flickr30k), source
(karpathy|tfds), score (gate|sum), aggregator (attention|mean|random|mlp), seed, runlocal. The
choices made where the paper is silent are listed in experiments/aape_retrieval.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ml_collections

from aape_jax.configs import trainer
from aape_jax.configs.args import Arg, parse_arg

# The experiment arguments and their defaults. `dataset` empty: "synthetic" with `runlocal`, else "coco".
ARGS: dict[str, Arg] = {"dataset": "", "source": "karpathy", "score": "gate", "aggregator": "attention", "seed": 1,
                        "runlocal": False}

# Test split sizes of the standard protocol, for the names of the evaluation sets.
EVAL_NAMES = {"synthetic": "synthetic_test", "coco": "coco_5k", "flickr30k": "flickr30k_1k"}


def parse_args(arg: str, names: Iterable[str] = tuple(ARGS), **extra: Arg) -> ml_collections.ConfigDict:
    """`arg` parsed for the arguments `names` of ARGS (with its defaults) and a file's own `extra` (name=default)."""
    return parse_arg(arg, **{name: ARGS[name] for name in names}, **extra)


def data_spec(name: str, split: str, *, source: str = "karpathy", max_captions: int = 0,
              runlocal: bool = False) -> ml_collections.ConfigDict:
    """One captioned data set: where it is and which split."""
    spec = ml_collections.ConfigDict()
    spec.name = name  # "synthetic" | "coco" | "flickr30k"
    # "karpathy": image folders + Karpathy split JSON; "tfds": TFDS coco_captions (needs tensorflow-datasets + TF).
    spec.source = source
    # COCO: the folder holding train2014/ and val2014/; Flickr30k: the flickr30k-images folder.
    # (tfds: exported images are written under ROOT/tfds_images when ROOT is set.)
    spec.root = ""
    spec.annotations = ""  # Karpathy JSON (empty: ROOT/dataset_<name>.json)
    spec.tfds_data_dir = ""  # TFDS data_dir (empty: TFDS' default)
    spec.check_files = True  # check that every image file exists before anything runs
    spec.split = split  # "train" (Karpathy train + restval) | "val" | "test"
    spec.max_captions = max_captions  # keep each image's first N captions (0: all)
    # "synthetic" only: images in the generated train and test splits.
    spec.synthetic_train = 256 if runlocal else 2048
    spec.synthetic_test = 40
    return spec


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The retrieval config for `arg` (any of ARGS)."""
    return build(parse_args(arg))


def build(args: Mapping[str, Arg], **fixed: Arg) -> ml_collections.ConfigDict:
    """The retrieval config for the ARGS values in `args`, overridden by `fixed`; absent ones take ARGS' defaults.

    Names outside ARGS (a file's own arguments, such as `flickr_root`) are the caller's to use.
    """
    values = {**ARGS, **{name: args[name] for name in args if name in ARGS}, **fixed}
    runlocal = bool(values["runlocal"])
    dataset = str(values["dataset"]) or ("synthetic" if runlocal else "coco")
    source = str(values["source"])
    config = ml_collections.ConfigDict()
    config.task = "retrieval"  # dispatched by aape_jax.main to aape_jax.retrieval.train

    trainer.add_frozen_clip(config, "" if runlocal else "openai/clip-vit-base-patch16")

    # Training data: all of an image's captions are its prompts.
    config.dataset = data_spec(dataset, "train", source=source, max_captions=0, runlocal=runlocal)
    config.dataset.num_views = 2  # K augmented views per training image, precomputed

    # Evaluation sets {name: data spec}; each gets AAPE and zero-shot CLIP R@1/5/10 both ways.
    config.eval = ml_collections.ConfigDict()
    config.eval[EVAL_NAMES[dataset]] = data_spec(dataset, "test", source=source, max_captions=5, runlocal=runlocal)
    config.eval_primary = EVAL_NAMES[dataset]  # whose metrics also go unprefixed into metrics.json
    config.eval_block = 1024  # image rows per similarity block (block x n_captions scores in memory)
    config.eval_ties = "pessimistic"  # "pessimistic" (ties count against) | "optimistic"
    config.eval_batch_size = 256 if not runlocal else 40  # images per embedding batch

    trainer.add_aape(config, aggregator=str(values["aggregator"]), runlocal=runlocal)
    config.model.score = str(values["score"])  # "gate" (learned gamma) | "sum" (gamma = alpha)
    config.model.alpha = 0.5  # gamma in e = n(q + gamma n(a)): fixed ("sum") or its initial value ("gate")

    trainer.add_training(config, optimizer="adamw", learning_rate=5e-4 if not runlocal else 3e-3, weight_decay=1e-4,
                         warmup_lr=1e-6, batch_size=256 if not runlocal else 32,
                         num_epochs=5 if not runlocal else 12, seed=int(values["seed"]))
    return config
