"""Pure train and eval step functions (no I/O).

The trainable tree (aggregator, generator, head) is the only thing
differentiated and optimised; the frozen CLIP parameters travel in `StepData`
as a jit argument. A batch holds precomputed image features, so the image
tower never runs here; the text tower runs only in token mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from aape_jax import losses
from aape_jax.clip.model import CLIP
from aape_jax.models.aape import AAPE
from aape_jax.models.heads import ClassPrefixCache, ClassText, class_logits, class_weights, l2_normalize

Batch = dict[str, jax.Array]  # features [B, D], labels [B], prompt_rows [B], index [B]


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds to resume training (never CLIP).

    Attributes:
      step: optimizer steps taken.
      params: the trainable tree.
      opt_state: optax state.
    """

    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class StepData:
    """Inputs shared by every step, replicated across devices.

    Attributes:
      prompts: normalised prompt embeddings [R, M, D], one row per prompt set
        (a class's descriptions, or an image's captions).
      prompt_mask: valid prompts [R, M].
      class_text: the training classes' templates.
      clip_params: the frozen CLIP parameters (used in token mode).
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
    combine = model.config.combine

    def loss_fn(params: Any, batch: Batch, data: StepData, key: jax.Array) -> tuple[jax.Array, dict]:
        variables = {"params": params}
        q, prompts, mask, keys = batch_prompts(batch, data, key)
        summary = model.apply(variables, q, prompts, mask, keys, method=AAPE.summarize)  # [B, D]
        aape = model.apply(variables, q, method=AAPE.generate)  # [B, D]
        head_out = model.apply(variables, aape, method=AAPE.project)
        w = class_weights(combine, head_out, data.class_text, clip_module, data.clip_params)  # [B, C, D]
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


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, axis_name: str | None = None) -> Callable:
    """Any `loss_fn(params, batch, data, key) -> (loss, parts)` -> the pure
    `train_step(state, batch, data, base_key) -> (state, metrics)`.

    The step's randomness is `fold_in(base_key, step)`; losses draw per example
    with `fold_in(., global index)`, so results do not depend on the device
    count. Under pmap (`axis_name`), gradients and metrics are averaged.
    """

    def train_step(state: TrainState, batch: Batch, data: Any, base_key: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        grads, parts = jax.grad(loss_fn, has_aux=True)(state.params, batch, data, key)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            parts = jax.lax.pmean(parts, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(parts, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_train_step(
    model: AAPE, clip_module: CLIP, tx: optax.GradientTransformation, weights: LossWeights,
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch, StepData, jax.Array], tuple[TrainState, dict]]:
    """AAPE's train step (`make_loss_fn` through `make_step`)."""
    return make_step(make_loss_fn(model, clip_module, weights, axis_name), tx, axis_name)


def make_logits_fn(model: AAPE, clip_module: CLIP) -> Callable[[Any, jax.Array, ClassText, Any, jax.Array], jax.Array]:
    """Returns the pure inference `logits(params, image_features, class_text, clip_params, logit_scale) -> [B, C]`.

    Only the generator and head run: no aggregator, no prompts. For `suffix`
    token runs, `prefix_cache=` takes the classes' precomputed
    `class_prefix_cache` (else it is computed inside, per call).
    """

    def logits_fn(params: Any, image_features: jax.Array, class_text: ClassText, clip_params: Any,
                  logit_scale: jax.Array, prefix_cache: ClassPrefixCache | None = None) -> jax.Array:
        variables = {"params": params}
        aape = model.apply(variables, l2_normalize(image_features), method=AAPE.generate)
        head_out = model.apply(variables, aape, method=AAPE.project)
        w = class_weights(model.config.combine, head_out, class_text, clip_module, clip_params,
                          prefix_cache=prefix_cache)
        return class_logits(image_features, w, logit_scale)

    return logits_fn
