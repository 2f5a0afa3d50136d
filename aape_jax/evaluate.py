"""Batched, sharded evaluation of a trained AAPE learner on precomputed image features."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from aape_jax import sharding
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.models.aape import AAPE
from aape_jax.models.heads import ClassText
from aape_jax.train_step import make_logits_fn

_LOGITS_CACHE: dict[tuple, Any] = {}


def sharded_logits_fn(model: AAPE, clip: FrozenCLIP, mesh: Mesh):
    """The jitted `logits(params, features, class_text, clip_params, logit_scale)`, input batch on `data`."""
    key = (model, clip.module, mesh)
    if key not in _LOGITS_CACHE:
        rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        _LOGITS_CACHE[key] = jax.jit(make_logits_fn(model, clip.module), in_shardings=(rep, batch, rep, rep, rep),
                                     out_shardings=rep)  # replicated: every process reads all logits
    return _LOGITS_CACHE[key]


def logits(model: AAPE, clip: FrozenCLIP, params: Any, features: np.ndarray, class_text: ClassText, mesh: Mesh,
           batch_size: int) -> np.ndarray:
    """Class logits np.float32 [N, C] for image features [N, D], in padded fixed-size batches."""
    n_dev = mesh.size
    batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    fn = sharded_logits_fn(model, clip, mesh)
    clip_params = clip.params if model.config.combine == "token" else None
    params, class_text, clip_params, scale = sharding.replicate(
        (params, class_text, clip_params, clip.params["logit_scale"]), mesh)
    out = []
    for start in range(0, len(features), batch_size):
        chunk = np.asarray(features[start : start + batch_size], np.float32)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        batch = sharding.global_batch({"z": padded}, mesh)["z"]
        out.append(np.asarray(fn(params, batch, class_text, clip_params, scale))[: len(chunk)])
    return np.concatenate(out)


def predict_classes(model: AAPE, clip: FrozenCLIP, params: Any, features: np.ndarray, class_text: ClassText,
                    mesh: Mesh, batch_size: int) -> np.ndarray:
    """Arg-max class per image [N]."""
    return logits(model, clip, params, features, class_text, mesh, batch_size).argmax(-1)
