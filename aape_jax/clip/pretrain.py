"""Contrastive pretraining of the project's Flax CLIP on an in-memory image-caption pool.

Used by the toy world (`aape_jax.toyworld`) to make a small CLIP whose zero-shot
behaviour is known; nothing here is specific to that world. The loss is CLIP's
symmetric InfoNCE over the batch with a learned logit scale (clipped at 100).
The step is one jit on the first device: the job is minutes on a CPU, and a
data-parallel mesh of simulated devices would only split the same two cores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from aape_jax.clip.config import CLIPConfig
from aape_jax.clip.model import CLIP
from aape_jax.clip.preprocess import ImageTransform
from aape_jax.clip.tiny import random_params
from aape_jax.numerics import l2_normalize

MAX_LOG_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Optimisation of a pretraining run.

    Attributes:
      steps: optimiser steps.
      batch_size: image-caption pairs per step (the contrastive batch).
      learning_rate: AdamW peak learning rate (linear warmup, cosine to 0).
      warmup_steps: warmup length.
      weight_decay: AdamW decay of the matrices (not of biases, norms or the scale).
      seed: initialisation and batch order.
    """

    steps: int = 700
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    seed: int = 0


def contrastive_loss(image_features: jax.Array, text_features: jax.Array, log_scale: jax.Array,
                     groups: jax.Array | None = None) -> jax.Array:
    """Symmetric InfoNCE: [B, D], [B, D] (+ content groups [B]) -> scalar.

    Row i matches column i; with `groups`, every pair of the same group counts
    as a match (the target spreads evenly over them), so two captions of the
    same content in one batch are not pushed apart as false negatives.
    """
    # A plain division, not numerics.l2_normalize (rsqrt): the cached toy CLIP and the README's
    # toy-world numbers come from this step, and the two differ in the last bits.
    zi = image_features / jnp.linalg.norm(image_features, axis=-1, keepdims=True)
    zt = text_features / jnp.linalg.norm(text_features, axis=-1, keepdims=True)
    logits = jnp.exp(jnp.minimum(log_scale, MAX_LOG_SCALE)) * zi @ zt.T  # [B, B]
    if groups is None:
        targets = jnp.eye(logits.shape[0])
    else:
        targets = (groups[:, None] == groups[None, :]).astype(jnp.float32)  # [B, B], symmetric
    targets = targets / targets.sum(-1, keepdims=True)
    return 0.5 * (optax.softmax_cross_entropy(logits, targets).mean()
                  + optax.softmax_cross_entropy(logits.T, targets).mean())


def _normalize(images: jax.Array, transform: ImageTransform) -> jax.Array:
    """uint8 [B, R, R, 3] already at the model's resolution -> CLIP-normalised float32 pixels."""
    mean = jnp.asarray(transform.mean, jnp.float32)
    std = jnp.asarray(transform.std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def pretrain(config: CLIPConfig, images: np.ndarray, caption_ids: np.ndarray, opt: PretrainConfig,
             transform: ImageTransform, groups: np.ndarray | None = None,
             desc: str = "pretraining CLIP") -> tuple[dict, list[float]]:
    """Trains a fresh CLIP of geometry `config` on (image, caption) pairs.

    Args:
      config: the geometry; images must already be `vision.image_size` square.
      images: uint8 [N, R, R, 3].
      caption_ids: int32 [N, K, L] token ids, K captions per image (one drawn per step).
      opt: optimisation settings.
      transform: the normalisation the checkpoint's preprocessing will apply.
      groups: int [N], optional: images of one group share their content (see `contrastive_loss`).
      desc: progress-bar label.

    Returns:
      (Flax parameter tree as numpy, loss per step).
    """
    r = config.vision.image_size
    if images.ndim != 4 or images.shape[1:] != (r, r, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, {r}, {r}, 3], got {images.dtype} {images.shape}")
    if caption_ids.ndim != 3 or caption_ids.shape[0] != images.shape[0]:
        raise ValueError(f"caption_ids must be [N={images.shape[0]}, K, L], got {caption_ids.shape}")
    if not 1 < opt.batch_size <= images.shape[0]:
        raise ValueError(f"batch_size must be in 2..{images.shape[0]} (the pool), got {opt.batch_size}")
    model = CLIP(config)
    params = jax.tree.map(jnp.asarray, random_params(config, opt.seed))
    params["logit_scale"] = jnp.asarray(config.logit_scale_init, jnp.float32)
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, opt.warmup_steps, opt.steps)
    decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)
    tx = optax.adamw(schedule, weight_decay=opt.weight_decay, mask=decay_mask)
    opt_state = tx.init(params)

    def loss_fn(p, pixels, ids, batch_groups):
        zi = model.apply({"params": p}, pixels, method=CLIP.encode_image)  # [B, D]
        zt = model.apply({"params": p}, ids, method=CLIP.encode_text)  # [B, D]
        return contrastive_loss(zi, zt, p["logit_scale"], batch_groups)

    # The pool lives on the device and the batch is gathered inside the step, which saves
    # three eager dispatches per step (about 2% of a step on a 2-core CPU).
    @jax.jit
    def step(p, state, pool_images, pool_ids, pool_groups, idx, which):
        pixels = _normalize(pool_images[idx], transform)
        loss, grads = jax.value_and_grad(loss_fn)(p, pixels, pool_ids[idx, which], pool_groups[idx])
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    rng = np.random.default_rng([opt.seed, 1])
    device_images = jax.device_put(images)
    device_ids = jax.device_put(caption_ids)
    groups = np.arange(images.shape[0]) if groups is None else np.asarray(groups)
    if groups.shape != (images.shape[0],):
        raise ValueError(f"groups must be [N={images.shape[0]}], got {groups.shape}")
    device_groups = jax.device_put(groups.astype(np.int32))
    losses: list[float] = []
    pending: list[jax.Array] = []
    with tqdm(total=opt.steps, desc=desc, unit="step") as bar:
        for i in range(opt.steps):
            idx = rng.choice(images.shape[0], opt.batch_size, replace=False)
            which = rng.integers(0, caption_ids.shape[1], opt.batch_size)
            params, opt_state, loss = step(params, opt_state, device_images, device_ids, device_groups,
                                           idx.astype(np.int32), which.astype(np.int32))
            pending.append(loss)
            if len(pending) == 25 or i + 1 == opt.steps:  # fetch losses in groups: no sync per step
                losses.extend(float(x) for x in jax.device_get(pending))
                pending = []
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"pretraining loss is {losses[-1]} at step {i + 1}")
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    params["logit_scale"] = jnp.minimum(params["logit_scale"], MAX_LOG_SCALE)
    return jax.tree.map(np.asarray, jax.device_get(params)), losses


def zero_shot_accuracy(encode_image, encode_text, pixels: np.ndarray, labels: np.ndarray,
                       prompt_ids: np.ndarray) -> float:
    """Top-1 (%) of `argmax_c cos(f(x), g(prompt_c))`: pixels [N, R, R, 3], labels [N], prompt ids [C, L]."""
    zi = l2_normalize(np.asarray(encode_image(pixels)))
    zt = l2_normalize(np.asarray(encode_text(prompt_ids)))
    return float(100.0 * np.mean((zi @ zt.T).argmax(-1) == np.asarray(labels)))


def tokenize_captions(tokenizer, captions: Sequence[Sequence[str]]) -> np.ndarray:
    """int32 [N, K, L] ids of K captions per image (every image has the same K)."""
    k = len(captions[0])
    flat = [c for per_image in captions for c in per_image]
    if len(flat) != k * len(captions):
        raise ValueError("every image needs the same number of captions")
    return tokenizer(flat).reshape(len(captions), k, -1)
