r"""AAPE, base-to-new generalisation (CoCoOp protocol), ViT-B/16.

Launch (one dataset, one seed; a real CLIP checkpoint, CoOp data layout and a
CuPL prompt file):

  python -m aape_jax.main \
    --config experiments/aape_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 \
    --config.dataset.root=$DATA --config.prompts.path=$CUPL/caltech101.json \
    --workdir runs/aape/caltech101/seed1

Offline default (tiny random CLIP made in the workdir, procedurally generated
images with named classes, generated class descriptions; its accuracies come
from random weights and mean nothing):

  python -m aape_jax.main --config experiments/aape_base2new.py:runlocal --workdir /tmp/aape_runlocal

Arguments (comma-separated, `key=value`): dataset, shots, seed, combine
(token|feature), aggregator (attention|mean|random|mlp), runlocal.

Expected numbers: AAPE's own base/new/H are not reachable here (DESIGN §5).
Compare with the published 11-dataset averages (ViT-B/16, Base/New/H):
CoCoOp 80.47/71.69/75.83, KgCoOp 80.73/73.60/77.00, CuPL 72.56/74.22/73.38,
PromptSRC 84.26/76.10/79.97 (PromptSRC README; ProText paper).

Choices where the paper is silent (all config fields below): one cross-
attention layer as aggregator; a D -> D/16 -> D generator; the AAPE inserted as
one token right after [SOS] of "a photo of a {}."; CoCoOp's optimisation
(SGD, lr 0.002, batch 1 in CoCoOp; we use batch 32 with K=8 precomputed
augmented views per image); lambda = 1 (the paper reports robustness to it).
"""

from __future__ import annotations

import ml_collections


def _parse(arg: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        out[key] = value if sep else True
    known = {"dataset", "shots", "seed", "combine", "aggregator", "runlocal"}
    unknown = set(out) - known
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: {sorted(known)}")
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = _parse(arg)
    runlocal = bool(args.get("runlocal", False))
    config = ml_collections.ConfigDict()
    config.task = "classification"  # "classification" | "retrieval" (see experiments/aape_retrieval.py)

    # Frozen CLIP: an HF-format directory or hub id. Empty: a random CLIP of
    # `random_clip_geometry` is written to WORKDIR/random_clip and loaded from there.
    config.clip = "" if runlocal else "openai/clip-vit-base-patch16"
    config.random_clip_geometry = "tiny"  # used only when `clip` is empty ("tiny" | "vit-b-16")
    config.clip_dtype = "float32"  # compute dtype of the frozen towers ("bfloat16" on TPU/GPU)

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = str(args.get("dataset", "synthetic" if runlocal else "caltech101"))
    config.dataset.root = ""  # dataset root (CoOp layout); unused by "synthetic"
    config.dataset.shots = int(args.get("shots", 16))  # training images per base class
    config.dataset.num_views = 4 if runlocal else 8  # K augmented views per training image, precomputed
    # "synthetic" only: classes and images per class.
    config.dataset.synthetic_classes = 10
    config.dataset.synthetic_train_per_class = 16
    config.dataset.synthetic_test_per_class = 8

    config.prompts = ml_collections.ConfigDict()
    # CuPL-format JSON {class name: [sentence, ...]}. Empty with "synthetic":
    # descriptions are generated into WORKDIR/prompts.json.
    config.prompts.path = ""
    config.prompts.aliases = ml_collections.ConfigDict()  # {dataset class name: key in the prompt file}
    config.prompts.fallback_to_templates = False  # classes without prompts get the 80 ImageNet templates
    config.prompts.max_per_class = 0  # keep at most this many prompts per class (0: all)

    config.model = ml_collections.ConfigDict()
    config.model.combine = str(args.get("combine", "token"))  # "token" (paper) | "feature" (fast)
    config.model.aggregator = str(args.get("aggregator", "attention"))  # attention | mean | random | mlp
    config.model.num_heads = 8 if not runlocal else 4  # attention aggregator heads
    config.model.aggregator_hidden = 512  # MLP aggregator width
    config.model.generator_hidden = 32 if not runlocal else 16  # generator bottleneck (D/16 for ViT-B/16)
    config.model.num_tokens = 1  # AAPE tokens inserted after [SOS] (token mode)
    config.model.template = "a photo of a {}."  # class template for both heads

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

    # On-disk text/image feature store; point sweeps at one shared directory (empty: WORKDIR/feature_store).
    config.feature_store = ""
    config.checkpoint_keep = 3  # checkpoints preserved (LatestN)
    config.checkpoint_every_epochs = 1
    config.init = ""  # a workdir whose latest checkpoint initialises the trainable tree (if none to resume)
    config.log_every_steps = 10
    return config
