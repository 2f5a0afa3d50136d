"""The baselines' learned pieces: CoOp / KgCoOp context, CoCoOp conditional context, a linear probe.

All prompt learners produce token embeddings [B, T, W] that `heads.class_weights`
inserts right after [SOS] of each class's `"{class}."` prompt, giving CoOp's
`[SOS] ctx_1 .. ctx_T {class}. [EOT]`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class ContextPrompt(nn.Module):
    """CoOp's unified context: T learned token embeddings shared by all classes.

    Attributes:
      ctx_init: initial context [T, W] (CoOp: the embeddings of "a photo of a").
    """

    ctx_init: np.ndarray

    @nn.compact
    def __call__(self) -> jax.Array:
        ctx = self.param("ctx", lambda key, shape: jnp.asarray(self.ctx_init, jnp.float32), self.ctx_init.shape)
        return ctx[None]  # [1, T, W]


class ConditionalContextPrompt(nn.Module):
    """CoCoOp: the shared context plus a per-image shift from a meta-net, `ctx_t + pi(x)`.

    Attributes:
      ctx_init: initial context [T, W].
      hidden: meta-net bottleneck (CoCoOp: D / 16).
    """

    ctx_init: np.ndarray
    hidden: int

    @nn.compact
    def __call__(self, image_features: jax.Array) -> jax.Array:
        ctx = self.param("ctx", lambda key, shape: jnp.asarray(self.ctx_init, jnp.float32), self.ctx_init.shape)
        h = nn.relu(nn.Dense(self.hidden, name="linear1")(image_features))  # [B, H]
        shift = nn.Dense(ctx.shape[-1], name="linear2")(h)  # [B, W]
        return ctx[None] + shift[:, None, :]  # [B, T, W]


class ResidualLinearProbe(nn.Module):
    """Per-class residuals added to the zero-shot text weights of the training classes.

    A plain linear probe has no weights for classes it never saw; this one is
    initialised at zero-shot CLIP (zero residuals), so unseen classes keep
    their zero-shot weights.

    Attributes:
      num_classes: training classes.
      embed_dim: D.
    """

    num_classes: int
    embed_dim: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("delta", nn.initializers.zeros, (self.num_classes, self.embed_dim))  # [C, D]
