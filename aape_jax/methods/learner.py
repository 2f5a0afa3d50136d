"""What every method of the harness is: a `Learner`, and the pieces the baselines share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from aape_jax import losses
from aape_jax.numerics import l2_normalize


@dataclasses.dataclass
class Learner:
    """One method in the harness.

    Attributes:
      name: the method.
      class_text: class names -> what `logits_fn` needs about them (host side, once per list).
      logits_fn: pure `(params, image_features [B, D], class_text, clip_params, logit_scale) -> [B, C]`.
      uses_clip_text: whether the text tower runs inside `logits_fn` / the loss (CLIP params are passed).
      init_params: key -> a fresh trainable tree; None when the method does not train.
      make_loss: pmap axis name or None -> `loss_fn(params, batch, data, key) -> (loss, parts)`.
      step_data: the pytree every train step receives as `data`.
    """

    name: str
    class_text: Callable[[Sequence[str]], Any]
    logits_fn: Callable
    uses_clip_text: bool = False
    init_params: Callable[[jax.Array], Any] | None = None
    make_loss: Callable[[str | None], Callable] | None = None
    step_data: Any = None


@flax.struct.dataclass
class BaselineData:
    """What a baseline's train step receives besides the batch.

    Attributes:
      class_text: the training classes' text (method specific).
      clip_params: the frozen CLIP (None when the text tower does not run).
      logit_scale: CLIP's stored log logit scale.
    """

    class_text: Any
    clip_params: Any
    logit_scale: jax.Array


def scaled_cosine(image_features: jax.Array, weights: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """`exp(s) * cos(f, w_c)` for class weights shared by all images: [B, D], [C, D] -> [B, C]."""
    return jnp.exp(logit_scale) * l2_normalize(image_features) @ l2_normalize(weights).T


def fixed_weights_logits(params, image_features, class_text, clip_params, logit_scale):
    """`logits_fn` of a method whose class weights are its class text ([C, D]); nothing is trained."""
    return scaled_cosine(image_features, class_text, logit_scale)


def cross_entropy_loss(logits_fn: Callable, regulariser: Callable | None = None) -> Callable[[str | None], Callable]:
    """`make_loss` of a baseline trained with cross-entropy on the training classes.

    `regulariser(params, data) -> (weight * term, {name: term})` adds a method's own term (KgCoOp's).
    """

    def make_loss(axis_name: str | None) -> Callable:
        def loss_fn(params, batch, data: BaselineData, key):
            logits = logits_fn(params, batch["features"], data.class_text, data.clip_params, data.logit_scale)
            ce = losses.cross_entropy(logits, batch["labels"])
            parts = {"ce": ce, "batch_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}
            total = ce
            if regulariser is not None:
                term, logged = regulariser(params, data)
                parts.update(logged)
                total = total + term
            parts["loss"] = total
            return total, parts

        return loss_fn

    return make_loss
