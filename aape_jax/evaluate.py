"""Batched, sharded evaluation of a learned classifier on precomputed image features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from aape_jax import sharding

# logits_fn(params, image_features [B, D], class_text, clip_params, logit_scale) -> [B, C]
LogitsFn = Callable[[Any, jax.Array, Any, Any, jax.Array], jax.Array]


def logits(logits_fn: LogitsFn, params: Any, features: np.ndarray, class_text: Any, clip_params: Any,
           logit_scale: Any, mesh: Mesh, batch_size: int) -> np.ndarray:
    """Class logits np.float32 [N, C] for image features [N, D], in padded fixed-size batches.

    Batches are sharded on `data`; the outputs are replicated so that every
    process reads all of them.
    """
    batch_size = -(-batch_size // mesh.size) * mesh.size  # a multiple of the device count
    rep = sharding.replicated(mesh)
    fn = jax.jit(logits_fn, in_shardings=(rep, sharding.batch_sharding(mesh), rep, rep, rep), out_shardings=rep)
    params, class_text, clip_params, logit_scale = sharding.replicate(
        (params, class_text, clip_params, logit_scale), mesh)
    out = []
    for start in range(0, len(features), batch_size):
        chunk = np.asarray(features[start : start + batch_size], np.float32)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        batch = sharding.global_batch({"z": padded}, mesh)["z"]
        out.append(np.asarray(fn(params, batch, class_text, clip_params, logit_scale))[: len(chunk)])
    return np.concatenate(out)
