"""Batched, sharded evaluation of a learned classifier on precomputed image features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from aape_jax import sharding
from aape_jax.numerics import padded_batches

# logits_fn(params, image_features [B, D], class_text, clip_params, logit_scale) -> [B, C]
LogitsFn = Callable[[Any, jax.Array, Any, Any, jax.Array], jax.Array]


def logits(logits_fn: LogitsFn, params: Any, features: np.ndarray, class_text: Any, clip_params: Any,
           logit_scale: Any, mesh: Mesh, batch_size: int) -> np.ndarray:
    """Class logits np.float32 [N, C] for image features [N, D], in padded fixed-size batches.

    Batches are sharded on `data`; the outputs are replicated so that every
    process reads all of them.
    """
    rep = sharding.replicated(mesh)
    fn = jax.jit(logits_fn, in_shardings=(rep, sharding.batch_sharding(mesh), rep, rep, rep), out_shardings=rep)
    params, class_text, clip_params, logit_scale = sharding.replicate(
        (params, class_text, clip_params, logit_scale), mesh)
    return padded_batches(
        lambda z: fn(params, sharding.global_batch({"z": z}, mesh)["z"], class_text, clip_params, logit_scale),
        np.asarray(features, np.float32), sharding.device_multiple(batch_size, mesh))
