"""The classification config every method's experiment file shares: base-to-new, few-shot, transfer.

Arguments (comma-separated `key=value`, `ARGS`): dataset, shots, seed, combine, aggregator,
templates, runlocal, toyworld.

`runlocal`: seconds-fast pipeline check (a tiny random CLIP, the synthetic set;
its accuracies mean nothing). `toyworld`: the toy world's pretrained small CLIP
(`python -m aape_jax.toyworld pretrain`, cached per machine) on a toy-world task
(`toy_concepts` by default, or `dataset=toy_shift`), with zero-shot CLIP
reported beside the method; learning rates from its validation split
(`python launch/toyworld_table.py select`).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from aape_jax.configs import trainer
from aape_jax.configs.args import Arg, parse_arg
from aape_jax.prompts.templates import DATASET_TEMPLATES

# The experiment arguments and their defaults. `dataset` empty: "synthetic" with `runlocal`,
# "toy_concepts" with `toyworld`, else "caltech101" (`transfer`: "imagenet").
ARGS: dict[str, Arg] = {"dataset": "", "shots": 16, "seed": 1, "combine": "token", "aggregator": "attention",
                        "templates": "single", "runlocal": False, "toyworld": False}


def base2new(arg: str, method: str) -> ml_collections.ConfigDict:
    """The base-to-new config every method shares; `arg` as in the per-method files."""
    return _build(parse_arg(arg, **ARGS), method)


def transfer(arg: str, method: str, targets: Sequence[str]) -> ml_collections.ConfigDict:
    """Protocol "transfer": `method` trained on `dataset` (default ImageNet, all its classes), tested on `targets`.

    With `runlocal` it trains on the synthetic set and tests that as its own target.
    """
    args = parse_arg(arg, **ARGS)
    if not args.runlocal and not args.dataset:
        args.dataset = "imagenet"
    config = _build(args, method)
    config.protocol = "transfer"
    config.transfer_targets = ["synthetic"] if args.runlocal else list(targets)
    return config


def _build(args: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    runlocal, toy = args.runlocal, args.toyworld
    if runlocal and toy:
        raise ValueError("choose one of the config arguments 'runlocal' and 'toyworld'")
    config = ml_collections.ConfigDict()
    config.task = "classification"  # "classification" | "retrieval" (see aape_jax/configs/retrieval.py)
    config.protocol = "base2new"  # "base2new" | "fewshot" (all classes) | "transfer" (see transfer_targets)
    config.transfer_targets = []  # datasets tested after training on `dataset` (protocol "transfer")
    config.method = method  # a key of aape_jax.methods.METHODS (zeroshot_clip, cupl, ..., aape)

    trainer.add_frozen_clip(config, "" if runlocal else "toyworld" if toy else "openai/clip-vit-base-patch16")

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = args.dataset or ("synthetic" if runlocal else "toy_concepts" if toy else "caltech101")
    config.dataset.root = ""  # dataset root (CoOp layout); unused by "synthetic"
    config.dataset.source = "coop"  # "coop" (folders + split files) | "tfds" | "folder" (root/<class>/*.jpg)
    config.dataset.shots = args.shots  # training images per base class
    config.dataset.num_views = 4 if runlocal or toy else 8  # K augmented views per training image, precomputed
    # An image file that cannot be decoded: "fail" (an error naming it) | "skip" (left out, listed in the
    # log and in metrics.json's skipped_images).
    config.dataset.on_bad_image = "fail"
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

    trainer.add_aape(config, aggregator=args.aggregator, runlocal=runlocal)
    config.model.combine = args.combine  # "token" (paper) | "feature" (fast)
    config.model.num_tokens = 1  # AAPE tokens inserted per image (token mode)
    # Where (token mode): "suffix" = `[SOS] template [AAPE] [EOT]`: each class's prefix runs once
    # (K/V cached), ~5x faster on a CPU (bench train_step); "prefix" = `[SOS] [AAPE] template [EOT]`.
    # The paper does not say.
    # Default from the toy-world table (README, "What the toy world shows"; seeds 1-3): H of suffix
    # vs prefix 6.4 ± 4.1 vs 3.9 ± 3.2 on toy_concepts (within one std) but 50.3 ± 0.4 vs 54.6 ± 1.5
    # on toy_shift (4.3 points lower, beyond either std): not within one std on both, so prefix stays.
    # On SigLIP (bidirectional text) "suffix" has no cache: the whole sequence per pair (logged).
    config.model.token_position = "prefix"
    # Token mode, whole-sequence path ("prefix", SigLIP): activations its backward pass may keep; the
    # classes run in the largest chunks that fit, each recomputed once in the backward pass (all at
    # once when they fit). Results do not depend on it (nor may a resume be refused for it).
    config.model.text_memory_gb = 0.25  # = models.heads.TEXT_MEMORY_GB (configs import no jax)
    # Class template of both heads and of the baselines' hand-crafted prompt: CoOp's per-dataset one.
    config.model.template = DATASET_TEMPLATES.get(config.dataset.name, "a photo of a {}.")

    # Baselines (ignored by AAPE).
    config.baseline = ml_collections.ConfigDict()
    config.baseline.templates = args.templates  # zeroshot_clip: "single" | "ensemble" (80)
    config.baseline.ctx_init = "a photo of a"  # CoOp family: context initialisation (its length = n_ctx)
    config.baseline.meta_ratio = 16  # CoCoOp: meta-net bottleneck D / meta_ratio
    config.baseline.kg_weight = 8.0  # KgCoOp: lambda of ||w - w_clip||^2 (KgCoOp paper)

    trainer.add_training(config, optimizer="sgd", learning_rate=0.002 if not runlocal else 0.05, weight_decay=5e-4,
                         warmup_lr=1e-5, batch_size=32, num_epochs=10, seed=args.seed)
    config.eval_batch_size = 64 if not runlocal else 32
    config.evaluate_split = "test"  # "test"; "val" for hyper-parameter selection (aape_jax.toyworld table)
    config.report_zeroshot = toy  # also evaluate zero-shot CLIP (config.model.template) on the same images
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
