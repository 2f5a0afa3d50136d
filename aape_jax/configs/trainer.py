"""Config fields every task shares, defined once: the frozen CLIP, the AAPE modules and loss, the trainer.

Classification (aape_jax.train), retrieval (aape_jax.retrieval.train), captioning and VQA
(aape_jax.captioning) load CLIP with the same `frozen_stage.load_clip`, build the same aggregator and
generator, and train with the same `trainer.fit`; the arguments here are the values in which their
configs differ.
"""

from __future__ import annotations

import ml_collections


def add_frozen_clip(config: ml_collections.ConfigDict, clip: str) -> None:
    """`config.clip`, `toyworld_tokenizer_dir`, `random_clip_geometry`, `clip_dtype`."""
    # Frozen CLIP: an HF-format directory or hub id. Empty: a random CLIP of
    # `random_clip_geometry` is written to WORKDIR/random_clip (for a gs:// workdir: to the local
    # cache, aape_jax.frozen_stage.random_clip_dir) and loaded from there.
    # "toyworld": the toy world's small CLIP, pretrained once per machine (aape_jax.toyworld).
    config.clip = clip
    config.toyworld_tokenizer_dir = ""  # the real CLIP vocabulary for "toyworld" (empty: aape_jax.toyworld's search)
    config.random_clip_geometry = "tiny"  # used only when `clip` is empty ("tiny" | "vit-b-16" | "siglip-tiny")
    config.clip_dtype = "float32"  # compute dtype of the frozen towers ("bfloat16" on TPU/GPU)


def add_aape(config: ml_collections.ConfigDict, *, aggregator: str, runlocal: bool) -> None:
    """`config.model`'s aggregator and generator fields (a task adds its own after) and `config.loss`."""
    config.model = ml_collections.ConfigDict()
    config.model.aggregator = aggregator  # attention | mean | random | mlp
    config.model.num_heads = 8 if not runlocal else 4  # attention aggregator heads
    config.model.aggregator_hidden = 512  # MLP aggregator width
    config.model.generator_hidden = 32 if not runlocal else 16  # generator bottleneck (D/16 for ViT-B/16)

    config.loss = ml_collections.ConfigDict()
    config.loss.distill_weight = 1.0  # lambda
    config.loss.aggregator_weight = 1.0  # weight of the aggregator's CLIP-reward loss


def add_training(config: ml_collections.ConfigDict, *, optimizer: str, learning_rate: float, weight_decay: float,
                 warmup_lr: float, batch_size: int, num_epochs: int, seed: int) -> None:
    """`config.optim` and the training loop's fields (batches, epochs, devices, checkpoints, init)."""
    config.optim = ml_collections.ConfigDict()
    config.optim.name = optimizer  # "sgd" | "adamw" (may differ from `init`'s: only its trainable tree is read)
    config.optim.learning_rate = learning_rate
    config.optim.momentum = 0.9  # SGD only
    config.optim.weight_decay = weight_decay
    config.optim.warmup_epochs = 1  # linear warmup from warmup_lr to learning_rate, then cosine to 0
    config.optim.warmup_lr = warmup_lr
    config.optim.grad_clip = 1.0  # global-norm clipping (0: off)

    config.batch_size = batch_size  # global, split over the `data` mesh axis
    config.num_epochs = num_epochs  # 0: evaluate `init` without training
    # Init, augmentation, data order; and few-shot sampling (classification) or caption draws (retrieval).
    config.seed = seed
    config.parallelism = "jit"  # "jit" (sharded jit, default) | "pmap" (same parameters, legacy API)
    config.num_devices = 0  # devices on the data axis (0: all)

    # On-disk text/image feature store; point sweeps (runs on the same data) at one shared
    # directory (empty: WORKDIR/feature_store).
    config.feature_store = ""
    # Threads decoding and augmenting images ahead of the image encoder (0: one per core); the features
    # are bit-identical for any number (aape_jax.data.pipeline).
    config.decode_workers = 0
    config.checkpoint_keep = 3  # checkpoints preserved (LatestN)
    config.checkpoint_every_epochs = 1
    config.init = ""  # a workdir whose latest checkpoint initialises the trainable tree (if none to resume)
    # Metrics leave the device (NaN check, progress line, preemption poll) every this many steps and at epoch ends.
    config.log_every_steps = 10
    # Rerunning a workdir whose checkpoints/metrics were made with a config that differs in a field
    # that changes training stops with the diff (aape_jax.config_check); true: continue from them with
    # the new values, the change recorded in config.json's "history" (and metrics.json's config_changes).
    config.resume_with_changes = False
