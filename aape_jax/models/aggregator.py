"""Prompt aggregators: many prompt embeddings per image -> one summary prompt embedding.

All aggregators take the L2-normalised image feature `q` [B, D], the prompt
embeddings `prompts` [B, M, D] and a validity `mask` [B, M] (M varies per
image, so prompts are padded), and return an unnormalised summary [B, D].
None uses prompt positions, so each is invariant to the order of the prompts,
and padded prompts never contribute.

Variants (the paper's ablation): `attention` (default), `mean`, `random`,
`mlp`. `AGGREGATORS` maps the config's `model.aggregator` to the class.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def masked_mean(prompts: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the valid prompts: [B, M, D], [B, M] -> [B, D]."""
    weights = mask.astype(prompts.dtype)
    count = jnp.maximum(weights.sum(-1, keepdims=True), 1.0)  # [B, 1]
    return jnp.einsum("bm,bmd->bd", weights, prompts) / count


class AttentionAggregator(nn.Module):
    """Multi-head cross-attention: query from the image, keys/values from the prompts.

    The output is projected back to the joint space D. Our choice (the paper
    gives no equations): one attention layer with query, key, value and output
    projections, no positional encoding (so it is permutation invariant) and
    no residual (the summary is a mixture of prompts, not of the image).

    Attributes:
      num_heads: attention heads; D must be divisible by it.
    """

    num_heads: int = 8

    @nn.compact
    def __call__(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        d = prompts.shape[-1]
        attend = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=d, out_features=d, name="attention"
        )
        out = attend(q[:, None, :], prompts, mask=mask[:, None, None, :])  # [B, 1, D]
        return out[:, 0]


class MeanAggregator(nn.Module):
    """The plain average of the prompt embeddings (no parameters)."""

    @nn.compact
    def __call__(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return masked_mean(prompts, mask)


class RandomAggregator(nn.Module):
    """One valid prompt drawn uniformly at random per image (the mean at eval, when `rng` is None).

    `rng` holds one key per image [B], derived from the example's global index,
    so the draw does not depend on how the batch is sharded.
    """

    @nn.compact
    def __call__(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        if rng is None:
            return masked_mean(prompts, mask)
        logits = jnp.where(mask, 0.0, -jnp.inf)  # [B, M]
        pick = jax.vmap(jax.random.categorical)(rng, logits)  # [B]
        return jnp.take_along_axis(prompts, pick[:, None, None], axis=1)[:, 0]


class MLPAggregator(nn.Module):
    """An MLP applied to each prompt, then the masked mean (a DeepSets summary, not image-conditioned).

    Our reading of the paper's "MLP" ablation; the residual keeps the mean
    reachable at initialisation.

    Attributes:
      hidden: MLP hidden width.
    """

    hidden: int = 512

    @nn.compact
    def __call__(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        h = nn.Dense(self.hidden, name="fc1")(prompts)  # [B, M, H]
        h = nn.Dense(prompts.shape[-1], name="fc2", kernel_init=nn.initializers.zeros)(nn.gelu(h))
        return masked_mean(prompts + h, mask)


AGGREGATORS = {
    "attention": AttentionAggregator,
    "mean": MeanAggregator,
    "random": RandomAggregator,
    "mlp": MLPAggregator,
}
