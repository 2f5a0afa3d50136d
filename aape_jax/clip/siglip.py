"""Flax Linen SigLIP / SigLIP 2 (fixed resolution): the frozen backbone of a `SiglipModel` checkpoint.

Parameter names follow transformers' `SiglipModel` (`vision_model/head/probe`
for `vision_model.head.probe`), so `weights.convert` reads its checkpoints as
it reads CLIP's. The blocks are CLIP's pre-LayerNorm blocks
(`aape_jax.clip.model.Encoder`); what differs:

  * text: bidirectional attention, no start token, pooled at the *last*
    position (text is always padded to the full context, as SigLIP was
    trained), then a linear `head` with bias;
  * image: a patch conv with bias, no class token and no pre-LayerNorm; the
    post-LayerNorm tokens are pooled by a multi-head attention head (a learned
    probe attends over them, then a residual MLP);
  * scores: `exp(logit_scale) * cos + logit_bias`, read through a sigmoid.

`SigLIP` has `CLIP`'s methods, so the prompt-learning seam works unchanged,
except the prefix K/V cache, which needs causal attention (the token head
falls back to the whole sequence).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aape_jax.clip.config import CLIPConfig, TextConfig, VisionConfig
from aape_jax.clip.model import MLP, Encoder, PrefixKV, TextEmbeddings

Dtype = Any


class SiglipTextTransformer(nn.Module):
    """Bidirectional text tower pooled at the last position, with its projection `head`.

    Attributes:
      config: text tower geometry (`causal` False).
      projection_dim: D, the head's output width.
      dtype: compute dtype.
      remat: rematerialise each block in the backward pass.
    """

    config: TextConfig
    projection_dim: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        c = self.config
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(c.num_layers, c.num_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
                               causal=False, dtype=self.dtype, remat=self.remat)
        self.final_layer_norm = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype)
        self.head = nn.Dense(self.projection_dim, dtype=self.dtype)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        return self.embeddings.token_embedding(ids)  # [N, L, W]

    def encode_embeddings(self, x: jax.Array) -> jax.Array:
        """Token embeddings [N, L, W] -> projected [N, D], pooled at position L-1."""
        h = self.encoder(self.embeddings.add_positions(x.astype(self.dtype)))
        return self.head(self.final_layer_norm(h[:, -1]))


class TorchMultiheadAttention(nn.Module):
    """torch's `nn.MultiheadAttention` (batch first, no mask), with its parameter layout.

    `in_proj_weight` [3W, W] holds the q, k, v projections in torch's (out, in)
    layout, as the checkpoint stores them; `out_proj` is a Dense.

    Attributes:
      num_heads: attention heads.
      dtype: compute dtype.
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, tokens: jax.Array) -> jax.Array:
        """query [N, Q, W] attends over tokens [N, L, W] -> [N, Q, W]."""
        w = tokens.shape[-1]
        weight = self.param("in_proj_weight", nn.initializers.lecun_normal(), (3 * w, w)).astype(self.dtype)
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * w,)).astype(self.dtype)
        project = lambda x, i: (x @ weight[i * w : (i + 1) * w].T + bias[i * w : (i + 1) * w]).reshape(
            *x.shape[:-1], self.num_heads, w // self.num_heads)  # [N, L, H, Dh]
        out = jax.nn.dot_product_attention(project(query, 0), project(tokens, 1), project(tokens, 2))  # fp32 softmax
        return nn.Dense(w, dtype=self.dtype, name="out_proj")(out.reshape(*query.shape[:-1], w))


class MultiheadAttentionPooling(nn.Module):
    """SigLIP's MAP head: a learned probe attends over the tokens, then a residual MLP.

    Attributes:
      config: image tower geometry.
      dtype: compute dtype.
    """

    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Post-LayerNorm tokens [N, P, W] -> pooled [N, W]."""
        c = self.config
        probe = self.param("probe", nn.initializers.normal(0.02), (1, 1, c.hidden_size))
        query = jnp.broadcast_to(probe.astype(self.dtype), (tokens.shape[0], 1, c.hidden_size))
        pooled = TorchMultiheadAttention(c.num_heads, self.dtype, name="attention")(query, tokens)  # [N, 1, W]
        normed = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layernorm")(pooled)
        pooled = pooled + MLP(c.intermediate_size, c.hidden_act, self.dtype, name="mlp")(normed)
        return pooled[:, 0]


class SiglipVisionTransformer(nn.Module):
    """ViT without a class token, pooled by `MultiheadAttentionPooling`.

    Attributes:
      config: image tower geometry (`map_head` True).
      dtype: compute dtype.
    """

    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array, grid: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """pixels [N, R, R, 3] -> pooled [N, W]; with `grid`, also the post-LayerNorm patch tokens [N, P, W]
        (transformers' `last_hidden_state`)."""
        c = self.config
        x = SiglipVisionEmbeddings(c, self.dtype, name="embeddings")(pixels)  # [N, P, W]
        x = Encoder(c.num_layers, c.num_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
                    causal=False, dtype=self.dtype, name="encoder")(x)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="post_layernorm")(x)
        pooled = MultiheadAttentionPooling(c, self.dtype, name="head")(x)
        return (pooled, x) if grid else pooled


class SiglipVisionEmbeddings(nn.Module):
    """Patchify with a biased conv and add learned positions (no class token).

    Attributes:
      config: image tower geometry.
      dtype: compute dtype.
    """

    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        patches = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                          padding="VALID", dtype=self.dtype, name="patch_embedding")(pixels.astype(self.dtype))
        patches = patches.reshape(patches.shape[0], -1, c.hidden_size)  # [N, P, W]
        positions = nn.Embed(c.num_patches, c.hidden_size, name="position_embedding").embedding
        return patches + positions.astype(self.dtype)


class SigLIP(nn.Module):
    """Both SigLIP towers, with `CLIP`'s methods (see the module docstring).

    Attributes:
      config: the checkpoint's geometry (family "siglip").
      dtype: compute dtype; parameters stay in their stored dtype.
      remat_text: rematerialise the text blocks when differentiating through the text tower.
    """

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    remat_text: bool = False

    def setup(self) -> None:
        c = self.config
        self.text_model = SiglipTextTransformer(c.text, c.projection_dim, self.dtype, self.remat_text)
        self.vision_model = SiglipVisionTransformer(c.vision, self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init), ())
        self.logit_bias = self.param("logit_bias", nn.initializers.zeros, ())

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """NHWC normalised pixels [N, R, R, 3] -> image features [N, D] (not normalised)."""
        return self.vision_model(pixels).astype(jnp.float32)

    def encode_image_grid(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixels -> (image features [N, D], the post-LayerNorm patch tokens [N, P, W]), float32."""
        pooled, grid = self.vision_model(pixels, grid=True)
        return pooled.astype(jnp.float32), grid.astype(jnp.float32)

    def encode_text(self, ids: jax.Array) -> jax.Array:
        """Token ids [N, context_length] (padded to the full context) -> text features [N, D]."""
        return self.text_model.encode_embeddings(self.text_model.embed_tokens(ids)).astype(jnp.float32)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """Token ids [..., L] -> token embeddings [..., L, W] (no positions), the prompt-learning seam."""
        return self.text_model.embed_tokens(ids)

    def encode_text_embeddings(self, x: jax.Array, eot_pos: jax.Array) -> jax.Array:
        """Token embeddings [N, L, W] -> text features [N, D], pooled at the last position whatever
        `eot_pos` says (taken for `CLIP`'s signature)."""
        del eot_pos
        return self.text_model.encode_embeddings(x).astype(jnp.float32)

    def encode_text_prefix(self, x: jax.Array, length: jax.Array) -> list[PrefixKV]:
        raise ValueError("SigLIP's text tower is bidirectional: a prefix K/V cache needs causal attention")

    def encode_text_after_prefix(self, x: jax.Array, caches: list[PrefixKV]) -> jax.Array:
        raise ValueError("SigLIP's text tower is bidirectional: a prefix K/V cache needs causal attention")

    def __call__(self, pixels: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(pixels), self.encode_text(ids)
