"""Captioning's pure loss (LiMBeR, and AAPE on top) and the soft-token functions inference shares. No I/O.

Per training example (an image x, one of its captions c drawn per step):
  tokens   = [image soft tokens | AAPE soft tokens (AAPE only) | prompt | c | EOS]
  L_LM     = cross-entropy of the frozen LM on the tokens of c and EOS only: the soft tokens, the
             prompt and the padding contribute nothing (mean over the batch's target tokens).
AAPE adds, with q = n(f(x)):
  p        = n(A(q, C(x) \\ {c}))     the aggregator's summary of x's OTHER captions (leave-one-out:
                                      the caption being predicted is not in its own summary)
  a        = h(q)                    the generator, from the image alone
  loss     = L_LM + lambda * L_distill(a, p) + w_agg * L_agg(p, q)  (as classification's)
and its soft tokens come from p in training and from a at test time (`soft_tokens`).

Prompts are left-padded and targets right-padded, so every target follows its
prompt's last real token; positions skip the padding (`lm.layers.positions_from_mask`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from aape_jax import losses
from aape_jax.captioning.model import CaptionMaps
from aape_jax.lm import generate as lm_generate
from aape_jax.lm.config import LMConfig
from aape_jax.lm.model import CausalLM
from aape_jax.numerics import l2_normalize
from aape_jax.train_step import LossWeights
from aape_jax.trainer import Batch  # features [B, F], prompt_rows [B] (the example's row), index [B]


@flax.struct.dataclass
class CaptionData:
    """Inputs every step shares, replicated. R rows (images, or VQA questions), M targets per row.

    Attributes:
      lm_params: the frozen language model's parameters (an argument of the step, never trained).
      targets: target token ids [R, M, T] (caption or answer, then EOS; right-padded).
      target_mask: [R, M, T], true on the target tokens and EOS.
      prompt_ids: prompt token ids [R, Lp] (left-padded), e.g. "A picture of" or "Q: ... A:".
      prompt_mask: [R, Lp].
      caption_embeds: normalised CLIP embeddings of each row's captions [R, M, D] (AAPE's aggregator).
      caption_valid: [R, M], which of the M targets / captions exist.
      logit_scale: CLIP's stored log logit scale (the CLIP reward).
    """

    lm_params: Any
    targets: jax.Array
    target_mask: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    caption_embeds: jax.Array
    caption_valid: jax.Array
    logit_scale: jax.Array


def split_features(model: CaptionMaps, features: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Feature rows [B, D] or [B, D + P * Wv] (`FrozenCLIP.encode_image_grid`) -> (f(x) [B, D], grid or None)."""
    c = model.config
    if c.image_input != "grid":
        return features, None
    grid = features[:, c.feature_dim:]
    return features[:, :c.feature_dim], grid.reshape(features.shape[0], -1, c.grid_width)


def soft_tokens(model: CaptionMaps, params: Any, features: jax.Array) -> jax.Array:
    """Test-time soft tokens [B, k + m, W] of feature rows: the image map, then (AAPE) the generator's AAPE."""
    variables = {"params": params}
    pooled, grid = split_features(model, features)
    tokens = model.apply(variables, pooled, grid, method=CaptionMaps.image_tokens)
    if model.config.aape is None:
        return tokens
    aape = model.apply(variables, l2_normalize(pooled), method=CaptionMaps.generate)
    return jnp.concatenate([tokens, model.apply(variables, aape, method=CaptionMaps.aape_tokens)], axis=1)


def target_loss(lm_config: LMConfig, lm_dtype: Any, lm_params: Any, soft: jax.Array, prompt_ids: jax.Array,
                prompt_mask: jax.Array, targets: jax.Array, target_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy of `targets` after [soft tokens | prompt], and the number of target tokens.

    Args:
      soft: soft tokens [B, S, W]; prompt_ids / prompt_mask: [B, Lp] (left-padded);
      targets / target_mask: [B, T] (right-padded).
    """
    lm = CausalLM(lm_config, dtype=lm_dtype)
    text = lm.apply({"params": lm_params}, jnp.concatenate([prompt_ids, targets], axis=1),
                    method=CausalLM.embed)  # [B, Lp + T, W]
    embeds = jnp.concatenate([soft.astype(text.dtype), text], axis=1)
    b, s = soft.shape[:2]
    mask = jnp.concatenate([jnp.ones((b, s), bool), prompt_mask, target_mask], axis=1)
    logits = lm_generate.forward(lm_params, embeds, mask, config=lm_config, dtype=lm_dtype)  # [B, L, V]
    start = s + prompt_ids.shape[1] - 1  # the position whose next token is the first target
    predicting = logits[:, start:start + targets.shape[1]]  # [B, T, V]
    ce = optax.softmax_cross_entropy_with_integer_labels(predicting, targets)  # [B, T]
    weight = target_mask.astype(jnp.float32)
    return jnp.sum(ce * weight), jnp.sum(weight)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """One key per example [B] from its global index, so draws do not depend on the sharding."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def pick_targets(keys: jax.Array, valid: jax.Array) -> jax.Array:
    """One existing target per example, uniformly: keys [B], valid [B, M] -> indices [B]."""
    return jax.vmap(lambda k, v: jax.random.categorical(jax.random.fold_in(k, 1), jnp.where(v, 0.0, -jnp.inf)))(
        keys, valid)


def make_loss_fn(model: CaptionMaps, lm_config: LMConfig, lm_dtype: Any, weights: LossWeights,
                 axis_name: str | None = None, aape_from: str = "summary") -> Callable:
    """Returns `loss_fn(params, batch, data, key) -> (loss, parts)` (`aape_jax.trainer` makes the step).

    `aape_from`: "summary" (captioning: the leave-one-out summary feeds the AAPE tokens and the
    generator is distilled to it) or "generator" (VQA fine-tuning: the test-time path, LM loss only).
    Under pmap (`axis_name`) the LM loss is the token mean over the global batch and the CLIP reward
    runs over the gathered batch, so pmap and jit optimise the same objective.
    """
    aape = model.config.aape is not None

    def loss_fn(params: Any, batch: Batch, data: CaptionData, key: jax.Array) -> tuple[jax.Array, dict]:
        variables = {"params": params}
        rows = batch["prompt_rows"]
        keys = example_keys(key, batch["index"])
        valid = data.caption_valid[rows]  # [B, M]
        pick = pick_targets(keys, valid)  # [B]: the target of this step
        targets = jnp.take_along_axis(data.targets[rows], pick[:, None, None], axis=1)[:, 0]  # [B, T]
        target_mask = jnp.take_along_axis(data.target_mask[rows], pick[:, None, None], axis=1)[:, 0]
        pooled, grid = split_features(model, batch["features"])
        soft = [model.apply(variables, pooled, grid, method=CaptionMaps.image_tokens)]
        parts: dict[str, jax.Array] = {}
        if aape:
            q = l2_normalize(pooled)
            a = model.apply(variables, q, method=CaptionMaps.generate)
            if aape_from == "summary":
                others = valid & (jnp.arange(valid.shape[1])[None, :] != pick[:, None])  # leave one out
                summary = model.apply(variables, q, data.caption_embeds[rows], others, keys,
                                      method=CaptionMaps.summarize)  # [B, D]
                soft.append(model.apply(variables, summary, method=CaptionMaps.aape_tokens))
                all_summary, all_q = summary, q
                if axis_name is not None:
                    gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)
                    all_summary, all_q = gather(summary), gather(q)
                parts["distill"] = losses.distill_loss(a, summary)
                parts["agg"] = losses.clip_reward_loss(all_summary, all_q, data.logit_scale)
            else:
                soft.append(model.apply(variables, a, method=CaptionMaps.aape_tokens))
        ce_sum, count = target_loss(lm_config, lm_dtype, data.lm_params, jnp.concatenate(soft, axis=1),
                                    data.prompt_ids[rows], data.prompt_mask[rows], targets, target_mask)
        if axis_name is None:
            lm_loss = ce_sum / jnp.maximum(count, 1.0)
        else:  # each device's share of the global token mean, so that the pmean of gradients is exact
            devices = jax.lax.psum(1, axis_name)
            lm_loss = devices * ce_sum / jnp.maximum(jax.lax.psum(count, axis_name), 1.0)
        total = lm_loss + weights.distill * parts.get("distill", 0.0) + weights.aggregator * parts.get("agg", 0.0)
        return total, {"loss": total, "lm": lm_loss, **parts}

    return loss_fn
