"""AAPE's classification loss and logits (pure, no I/O); `aape_jax.trainer` turns the loss into a step.

The trainable tree (aggregator, generator, head) is the only thing
differentiated and optimised; the frozen CLIP parameters travel in `StepData`
as a jit argument. A batch holds precomputed image features, so the image
tower never runs here; the text tower runs only when the head needs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from aape_jax import losses
from aape_jax.clip.model import CLIP
from aape_jax.models.aape import AAPE
from aape_jax.models.heads import ClassPrefixCache, ClassText, class_logits
from aape_jax.numerics import l2_normalize
from aape_jax.trainer import Batch


@flax.struct.dataclass
class StepData:
    """Inputs shared by every step, replicated across devices.

    Attributes:
      prompts: normalised prompt embeddings [R, M, D], one row per prompt set
        (a class's descriptions, or an image's captions).
      prompt_mask: valid prompts [R, M].
      class_text: the training classes' templates.
      clip_params: the frozen CLIP parameters (None when the head does not run the text tower).
      logit_scale: CLIP's stored log logit scale.
    """

    prompts: jax.Array
    prompt_mask: jax.Array
    class_text: ClassText
    clip_params: Any
    logit_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms: `CE + distill * L_distill + aggregator * L_agg`.

    Attributes:
      distill: lambda, the distillation weight.
      aggregator: weight of the aggregator's CLIP-reward loss.
    """

    distill: float = 1.0
    aggregator: float = 1.0


def batch_prompts(batch: Batch, data: Any, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The batch's normalised image features [B, D], its prompt sets [B, M, D] with masks [B, M],
    and one key per example [B] from its global index (so draws do not depend on sharding)."""
    q = l2_normalize(batch["features"])
    prompts = data.prompts[batch["prompt_rows"]]
    mask = data.prompt_mask[batch["prompt_rows"]]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"])
    return q, prompts, mask, keys


def make_loss_fn(model: AAPE, clip_module: CLIP, weights: LossWeights, axis_name: str | None = None) -> Callable:
    """Returns `loss_fn(params, batch, data, key) -> (loss, parts)`.

    With `axis_name` (pmap), the contrastive aggregator loss is computed over
    the global batch gathered across devices, so that pmap and jit optimise
    the same objective; the caller averages gradients with `pmean`.
    """
    head = model.config.head

    def loss_fn(params: Any, batch: Batch, data: StepData, key: jax.Array) -> tuple[jax.Array, dict]:
        variables = {"params": params}
        q, prompts, mask, keys = batch_prompts(batch, data, key)
        summary = model.apply(variables, q, prompts, mask, keys, method=AAPE.summarize)  # [B, D]
        aape = model.apply(variables, q, method=AAPE.generate)  # [B, D]
        head_out = model.apply(variables, aape, method=AAPE.project)
        w = head.class_weights(head_out, data.class_text, clip_module, data.clip_params)  # [B, C, D]
        logits = class_logits(batch["features"], w, data.logit_scale)  # [B, C]
        ce = losses.cross_entropy(logits, batch["labels"])
        distill = losses.distill_loss(aape, summary)
        all_summary, all_q = summary, q
        if axis_name is not None:
            all_summary = jax.lax.all_gather(summary, axis_name, tiled=True)  # [B_global, D]
            all_q = jax.lax.all_gather(q, axis_name, tiled=True)
        agg = losses.clip_reward_loss(all_summary, all_q, data.logit_scale)
        total = ce + weights.distill * distill + weights.aggregator * agg
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
        # How close the generator is to the aggregator's summary (L_distill is 2 - 2 * this when both are unit).
        cosine = jnp.mean(jnp.sum(l2_normalize(aape) * l2_normalize(summary), -1))
        return total, {"loss": total, "ce": ce, "distill": distill, "agg": agg, "batch_accuracy": accuracy,
                       "distill_cosine": cosine}

    return loss_fn


def make_logits_fn(model: AAPE, clip_module: CLIP) -> Callable[[Any, jax.Array, ClassText, Any, jax.Array], jax.Array]:
    """Returns the pure inference `logits(params, image_features, class_text, clip_params, logit_scale) -> [B, C]`.

    Only the generator and head run: no aggregator, no prompts. `class_cache=`
    takes the head's precomputed `class_cache` of these classes (for "suffix"
    token heads, their prefix keys/values; else it is computed inside, per call).
    """
    head = model.config.head

    def logits_fn(params: Any, image_features: jax.Array, class_text: ClassText, clip_params: Any,
                  logit_scale: jax.Array, class_cache: ClassPrefixCache | None = None) -> jax.Array:
        variables = {"params": params}
        aape = model.apply(variables, l2_normalize(image_features), method=AAPE.generate)
        head_out = model.apply(variables, aape, method=AAPE.project)
        w = head.class_weights(head_out, class_text, clip_module, clip_params, class_cache)
        return class_logits(image_features, w, logit_scale)

    return logits_fn
