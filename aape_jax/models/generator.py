"""The prompt generator h: the only learned piece (with the head) kept at test time."""

from __future__ import annotations

import flax.linen as nn
import jax


class PromptGenerator(nn.Module):
    """A two-layer MLP from the normalised image feature to the AAPE in the joint space.

    `a(x) = h(n(f(x)))`, D -> hidden -> D. Our choice of size: like CoCoOp's
    meta-net, a bottleneck (hidden = D / 16 by default in the configs).

    Attributes:
      hidden: bottleneck width.
      out_dim: D, the joint-space width.
    """

    hidden: int
    out_dim: int

    @nn.compact
    def __call__(self, image_features: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, name="linear1")(image_features))  # [B, H]
        return nn.Dense(self.out_dim, name="linear2")(h)  # [B, D]
