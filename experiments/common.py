"""The one module experiment configs share: the base-to-new config and its argument parser.

Run configs from the repository root (`experiments` is imported as a package).
Arguments (comma-separated `key=value`): dataset, shots, seed, combine,
aggregator, templates, runlocal, toyworld.

`runlocal`: seconds-fast pipeline check (a tiny random CLIP, the synthetic set;
its accuracies mean nothing). `toyworld`: the toy world's pretrained small CLIP
(`python -m aape_jax.toyworld pretrain`, cached per machine) on a toy-world task
(`toy_concepts` by default, or `dataset=toy_shift`), with zero-shot CLIP
reported beside the method; learning rates from its validation split
(`python launch/toyworld_table.py select`).
"""


from __future__ import annotations

import ml_collections

from aape_jax.prompts.templates import DATASET_TEMPLATES


def _parse(arg: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        out[key] = value if sep else True
    known = {"dataset", "shots", "seed", "combine", "aggregator", "templates", "runlocal", "toyworld"}
    unknown = set(out) - known
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: {sorted(known)}")
    return out


def base2new(arg: str, method: str) -> ml_collections.ConfigDict:
    """The base-to-new config every method shares; `arg` as in the per-method files."""
    args = _parse(arg)
    runlocal = bool(args.get("runlocal", False))
    toy = bool(args.get("toyworld", False))
    if runlocal and toy:
        raise ValueError("choose one of the config arguments 'runlocal' and 'toyworld'")
    config = ml_collections.ConfigDict()
    config.task = "classification"  # "classification" | "retrieval" (see experiments/aape_retrieval.py)
    config.protocol = "base2new"  # "base2new" | "fewshot" (all classes) | "transfer" (see transfer_targets)
    config.transfer_targets = []  # datasets tested after training on `dataset` (protocol "transfer")
    config.method = method  # aape | zeroshot_clip | cupl | linear_probe | coop | cocoop | kgcoop (aape_jax/methods.py)

    # Frozen CLIP: an HF-format directory or hub id. Empty: a random CLIP of
    # `random_clip_geometry` is written to WORKDIR/random_clip and loaded from there.
    # "toyworld": the toy world's small CLIP, pretrained once per machine (aape_jax.toyworld).
    config.clip = "" if runlocal else "toyworld" if toy else "openai/clip-vit-base-patch16"
    config.toyworld_tokenizer_dir = ""  # the real CLIP vocabulary for "toyworld" (empty: aape_jax.toyworld's search)
    config.random_clip_geometry = "tiny"  # used only when `clip` is empty ("tiny" | "vit-b-16")
    config.clip_dtype = "float32"  # compute dtype of the frozen towers ("bfloat16" on TPU/GPU)

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = str(args.get("dataset", "synthetic" if runlocal else "toy_concepts" if toy else "caltech101"))
    config.dataset.root = ""  # dataset root (CoOp layout); unused by "synthetic"
    config.dataset.source = "coop"  # "coop" (folders + split files) | "tfds" | "folder" (root/<class>/*.jpg)
    config.dataset.shots = int(args.get("shots", 16))  # training images per base class
    config.dataset.num_views = 4 if runlocal or toy else 8  # K augmented views per training image, precomputed
    # "synthetic" only: classes and images per class.
    config.dataset.synthetic_classes = 10
    config.dataset.synthetic_train_per_class = 16
    config.dataset.synthetic_test_per_class = 8

    config.prompts = ml_collections.ConfigDict()
    # CuPL-format JSON {class name: [sentence, ...]}. Empty with "synthetic":
    # descriptions are generated into WORKDIR/prompts.json.
    config.prompts.path = ""
    config.prompts.aliases = ml_collections.ConfigDict()  # {class name: key in the prompt file}, over the package's table
    config.prompts.target_paths = ml_collections.ConfigDict()  # {transfer target dataset: its prompt file} (CuPL, AAPE eval)
    config.prompts.fallback_to_templates = False  # classes without prompts get the 80 ImageNet templates
    config.prompts.max_per_class = 0  # keep at most this many prompts per class (0: all)

    config.model = ml_collections.ConfigDict()
    config.model.combine = str(args.get("combine", "token"))  # "token" (paper) | "feature" (fast)
    config.model.aggregator = str(args.get("aggregator", "attention"))  # attention | mean | random | mlp
    config.model.num_heads = 8 if not runlocal else 4  # attention aggregator heads
    config.model.aggregator_hidden = 512  # MLP aggregator width
    config.model.generator_hidden = 32 if not runlocal else 16  # generator bottleneck (D/16 for ViT-B/16)
    config.model.num_tokens = 1  # AAPE tokens inserted per image (token mode)
    # Where (token mode): "suffix" = `[SOS] template [AAPE] [EOT]`: each class's prefix runs once
    # (K/V cached), ~10x faster; "prefix" = `[SOS] [AAPE] template [EOT]`. The paper does not say.
    # Default from the toy-world table (README, "What the toy world shows"; seeds 1-3): H of suffix
    # vs prefix 49.0 ± 0.6 vs 48.6 ± 0.3 on toy_shift (within one std) but 7.5 ± 4.5 vs 20.5 ± 7.1 on
    # toy_concepts (13 points lower, beyond either std): not within one std on both, so prefix stays.
    config.model.token_position = "prefix"
    # Class template of both heads and of the baselines' hand-crafted prompt: CoOp's per-dataset one.
    config.model.template = DATASET_TEMPLATES.get(config.dataset.name, "a photo of a {}.")

    # Baselines (ignored by AAPE).
    config.baseline = ml_collections.ConfigDict()
    config.baseline.templates = str(args.get("templates", "single"))  # zeroshot_clip: "single" | "ensemble" (80)
    config.baseline.ctx_init = "a photo of a"  # CoOp family: context initialisation (its length = n_ctx)
    config.baseline.meta_ratio = 16  # CoCoOp: meta-net bottleneck D / meta_ratio
    config.baseline.kg_weight = 8.0  # KgCoOp: lambda of ||w - w_clip||^2 (KgCoOp paper)

    config.loss = ml_collections.ConfigDict()
    config.loss.distill_weight = 1.0  # lambda
    config.loss.aggregator_weight = 1.0  # weight of the aggregator's CLIP-reward loss

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"  # "sgd" | "adamw"
    config.optim.learning_rate = 0.002 if not runlocal else 0.05
    config.optim.momentum = 0.9  # SGD only
    config.optim.weight_decay = 5e-4
    config.optim.warmup_epochs = 1  # linear warmup from warmup_lr to learning_rate, then cosine to 0
    config.optim.warmup_lr = 1e-5
    config.optim.grad_clip = 1.0  # global-norm clipping (0: off)

    config.batch_size = 32  # global, split over the `data` mesh axis
    config.num_epochs = 10
    config.seed = int(args.get("seed", 1))  # few-shot sampling, init, augmentation, data order
    config.parallelism = "jit"  # "jit" (sharded jit, default) | "pmap" (same parameters, legacy API)
    config.num_devices = 0  # devices on the data axis (0: all)
    config.eval_batch_size = 64 if not runlocal else 32
    config.evaluate_split = "test"  # "test"; "val" for hyper-parameter selection (aape_jax.toyworld table)
    config.report_zeroshot = toy  # also evaluate zero-shot CLIP (config.model.template) on the same images

    # On-disk text/image feature store; point sweeps at one shared directory (empty: WORKDIR/feature_store).
    config.feature_store = ""
    config.checkpoint_keep = 3  # checkpoints preserved (LatestN)
    config.checkpoint_every_epochs = 1
    config.init = ""  # a workdir whose latest checkpoint initialises the trainable tree (if none to resume)
    config.log_every_steps = 10
    # Rerunning a workdir whose checkpoints/metrics were made with a config that differs in a field
    # that changes training stops with the diff (aape_jax.config_check); true: continue from them with
    # the new values, the change recorded in config.json's "history" (and metrics.json's config_changes).
    config.resume_with_changes = False
    if toy:
        # The toy world's CLIP is small (D = 64, width 64): fewer heads, a D/4 generator bottleneck.
        config.model.num_heads = 4
        config.model.generator_hidden = 16
        config.optim.learning_rate = TOY_LEARNING_RATES.get(method, config.optim.learning_rate)
    return config


# Learning rate per method in the toy world (SGD, 10 epochs, batch 32): the best mean base-class
# validation accuracy over both toy tasks (96 validation images each, seed 1) from the same grid
# (0.002, 0.01, 0.05, 0.2) for every method, as printed by `python launch/toyworld_table.py select`.
# AAPE's variants use AAPE's rate.
TOY_LEARNING_RATES: dict[str, float] = {"linear_probe": 0.01, "coop": 0.2, "cocoop": 0.2, "kgcoop": 0.05,
                                        "aape": 0.05}
