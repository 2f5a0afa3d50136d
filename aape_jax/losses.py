"""AAPE's loss terms: task cross-entropy, distillation, and the aggregator's CLIP reward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from aape_jax.numerics import l2_normalize


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy: logits [B, C], integer labels [B] -> scalar."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def distill_loss(aape: jax.Array, summary: jax.Array) -> jax.Array:
    """`L_distill = mean_b || n(a(x)) - sg(p_sum) ||^2`: the generator follows the summary, never the reverse."""
    diff = l2_normalize(aape) - jax.lax.stop_gradient(summary)  # [B, D]
    return jnp.sum(diff * diff, axis=-1).mean()


def clip_reward_loss(summary: jax.Array, image: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE between summaries and their images over the batch, at CLIP's temperature.

    Both inputs are normalised [B, D]; `logit_scale` is CLIP's stored log
    scale. The summary CLIP scores highest for its own image wins, which is how
    we read the paper's "CLIP reward".
    """
    logits = jnp.exp(logit_scale) * summary @ image.T  # [B, B]
    labels = jnp.arange(logits.shape[0])
    return 0.5 * (cross_entropy(logits, labels) + cross_entropy(logits.T, labels))
