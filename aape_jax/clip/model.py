"""Flax Linen CLIP: ViT image tower, causal text tower, projections.

Module and parameter names follow the Hugging Face checkpoint
(`text_model/encoder/layers_3/self_attn/q_proj/kernel` for
`text_model.encoder.layers.3.self_attn.q_proj.weight`), so converting a
checkpoint is renaming plus transposes (`weights.py`).

The text tower has a seam for prompt learning: `embed_tokens(ids)` gives token
embeddings, and `encode_text_embeddings(x, eot_pos)` runs the tower from any
token embeddings (learned prompt tokens included) and pools at `eot_pos`.
A KV-cache path serves prompts whose learned tokens come after a per-class
prefix: `encode_text_prefix` runs the causal tower once per class and keeps
every layer's keys/values; `encode_text_after_prefix` runs only the remaining
positions, attending to that cache. Causal attention makes the result equal to
running the whole sequence.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from aape_jax.clip.config import CLIPConfig, TextConfig, VisionConfig

Dtype = Any


@flax.struct.dataclass
class PrefixKV:
    """One layer's cached keys/values of per-class text prefixes.

    Attributes:
      k: keys [C, P, H, Dh].
      v: values [C, P, H, Dh].
      length: valid prefix positions per class [C] (the rest is padding, masked).
    """

    k: jax.Array
    v: jax.Array
    length: jax.Array


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    # gelu_new and gelu_pytorch_tanh are both the tanh approximation.
    return lambda x: jax.nn.gelu(x, approximate=True)


class Attention(nn.Module):
    """Multi-head self-attention with CLIP's separate q/k/v/out projections.

    Attributes:
      num_heads: attention heads.
      causal: mask future positions (text tower).
      dtype: compute dtype.
    """

    num_heads: int
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: PrefixKV | None = None, return_kv: bool = False):
        """Self-attention over `x`; optionally after cached prefix keys/values.

        Args:
          x: [N, L, W] (plain), or [B, C, S, W] with `cache` (suffix positions).
          cache: keys/values [C, P, H, Dh] of a per-class prefix and its valid
            lengths [C]; the suffix of class c attends to the first `length[c]`
            prefix positions, then causally to itself (`causal` must be set).
          return_kv: also return this call's keys and values [..., L, H, Dh].
        """
        width = x.shape[-1]
        head_dim = width // self.num_heads
        dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
        split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)  # [..., L, H, Dh]
        q = split(dense("q_proj")(x)) * (head_dim**-0.5)
        k = split(dense("k_proj")(x))
        v = split(dense("v_proj")(x))
        if cache is None:
            # jax.nn.dot_product_attention keeps logits and softmax in fp32 whatever the
            # compute dtype (bf16 softmax loses CLIP parity), and on CPU it ran the image
            # tower's attention about 2x faster than the same einsums written out here.
            out = jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=self.causal)  # [B, L, H, Dh]
        else:
            out = self._attend_after_prefix(q, k, v, cache)
        y = dense("out_proj")(out.reshape(*x.shape[:-1], width))
        return (y, (k, v)) if return_kv else y

    def _attend_after_prefix(self, q: jax.Array, k: jax.Array, v: jax.Array, cache: PrefixKV) -> jax.Array:
        if not self.causal:
            raise ValueError("a prefix cache needs causal attention")
        pk, pv, length = cache.k, cache.v, cache.length  # [C, P, H, Dh], [C, P, H, Dh], [C]
        s, p = q.shape[-3], pk.shape[-3]
        neg = jnp.finfo(q.dtype).min
        lp = jnp.einsum("bcqhd,ckhd->bchqk", q, pk.astype(q.dtype))  # [B, C, H, S, P]
        valid = jnp.arange(p)[None, :] < length[:, None]  # [C, P]
        lp = jnp.where(valid[None, :, None, None, :], lp, neg)
        ls = jnp.einsum("bcqhd,bckhd->bchqk", q, k)  # [B, C, H, S, S]
        ls = jnp.where(jnp.tril(jnp.ones((s, s), dtype=bool)), ls, neg)
        weights = jax.nn.softmax(jnp.concatenate([lp, ls], -1).astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bchqk,ckhd->bcqhd", weights[..., :p], pv.astype(self.dtype))  # [B, C, S, H, Dh]
        return out + jnp.einsum("bchqk,bckhd->bcqhd", weights[..., p:], v)


class MLP(nn.Module):
    """The block's two-layer MLP.

    Attributes:
      intermediate_size: hidden width.
      hidden_act: activation name.
      dtype: compute dtype.
    """

    intermediate_size: int
    hidden_act: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x)
        h = _activation(self.hidden_act)(h)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block.

    Attributes:
      num_heads: attention heads.
      intermediate_size: MLP width.
      hidden_act: MLP activation.
      layer_norm_eps: LayerNorm epsilon.
      causal: causal self-attention.
      dtype: compute dtype.
    """

    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cache: PrefixKV | None = None, return_kv: bool = False):
        ln = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
        attn = Attention(self.num_heads, self.causal, self.dtype, name="self_attn")(
            ln("layer_norm1")(x), cache, return_kv
        )
        attn, kv = attn if return_kv else (attn, None)
        x = x + attn
        x = x + MLP(self.intermediate_size, self.hidden_act, self.dtype, name="mlp")(ln("layer_norm2")(x))
        return (x, kv) if return_kv else x


class Encoder(nn.Module):
    """A stack of `EncoderLayer`s named `layers_0..N-1` like the checkpoint's `layers.N`.

    Attributes:
      num_layers: blocks.
      num_heads: attention heads.
      intermediate_size: MLP width.
      hidden_act: MLP activation.
      layer_norm_eps: LayerNorm epsilon.
      causal: causal self-attention.
      dtype: compute dtype.
      remat: recompute each block's activations in the backward pass instead of
        keeping them (forward results are unchanged).
    """

    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    causal: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, caches: list[PrefixKV] | None = None, return_kv: bool = False):
        """`x` [..., L, W] -> [..., L, W]; with `return_kv`, also every layer's (keys, values)."""
        # static_argnums counts `self` as 0: `return_kv` is a Python bool.
        block = nn.remat(EncoderLayer, static_argnums=(3,)) if self.remat else EncoderLayer
        kvs = []
        for i in range(self.num_layers):
            layer = block(
                self.num_heads, self.intermediate_size, self.hidden_act, self.layer_norm_eps, self.causal, self.dtype,
                name=f"layers_{i}",
            )
            out = layer(x, None if caches is None else caches[i], return_kv)
            x, kv = out if return_kv else (out, None)
            kvs.append(kv)
        return (x, kvs) if return_kv else x


class TextEmbeddings(nn.Module):
    """Token and learned absolute position embeddings.

    Attributes:
      config: text tower geometry.
    """

    config: TextConfig

    def setup(self) -> None:
        self.token_embedding = nn.Embed(self.config.vocab_size, self.config.hidden_size)
        self.position_embedding = nn.Embed(self.config.context_length, self.config.hidden_size)

    def add_positions(self, x: jax.Array) -> jax.Array:
        # Positions 0..L-1 only: L may be shorter than the context (trimmed prompts).
        return x + self.position_embedding.embedding[: x.shape[-2]].astype(x.dtype)


class TextTransformer(nn.Module):
    """Causal text tower, pooled at the first end-of-text token.

    Attributes:
      config: text tower geometry.
      dtype: compute dtype.
      remat: rematerialise each block in the backward pass (see `Encoder`).
    """

    config: TextConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        c = self.config
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(
            c.num_layers, c.num_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
            causal=True, dtype=self.dtype, remat=self.remat,
        )
        self.final_layer_norm = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        return self.embeddings.token_embedding(ids)  # [N, L, W]

    def encode_embeddings(self, x: jax.Array, eot_pos: jax.Array) -> jax.Array:
        """Token embeddings [N, L, W] and EOT positions [N] -> pooled [N, W]."""
        h = self.encoder(self.embeddings.add_positions(x.astype(self.dtype)))
        h = self.final_layer_norm(h)  # [N, L, W]
        return jnp.take_along_axis(h, eot_pos[:, None, None].astype(jnp.int32), axis=1)[:, 0]

    def encode_prefix(self, x: jax.Array, length: jax.Array) -> list[PrefixKV]:
        """Per-class prefix embeddings [C, P, W] at positions 0..P-1 -> every layer's cached K/V.

        Only the first `length[c]` positions of class c are attended to later;
        causal attention makes them independent of whatever follows.
        """
        h = self.embeddings.add_positions(x.astype(self.dtype))
        _, kvs = self.encoder(h, return_kv=True)
        return [PrefixKV(k=k, v=v, length=length.astype(jnp.int32)) for k, v in kvs]

    def encode_after_prefix(self, x: jax.Array, caches: list[PrefixKV]) -> jax.Array:
        """Suffix embeddings [B, C, S, W] placed right after each class's prefix -> pooled [B, C, W].

        Suffix position i of class c sits at absolute position `length[c] + i`;
        the output is pooled at the suffix's last position (its EOT token).
        """
        length = caches[0].length  # [C]
        positions = length[:, None] + jnp.arange(x.shape[-2])[None, :]  # [C, S]
        pos_embed = self.embeddings.position_embedding.embedding[positions]  # [C, S, W]
        h = x.astype(self.dtype) + pos_embed.astype(self.dtype)[None]  # [B, C, S, W]
        h = self.final_layer_norm(self.encoder(h, caches=caches))
        return h[:, :, -1]  # [B, C, W]

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.encode_embeddings(self.embed_tokens(ids), first_eot(ids, self.config.eot_token_id))


def first_eot(ids: jax.Array, eot_token_id: int) -> jax.Array:
    """Index of the first `eot_token_id` per row [N]; the last position if a row has none."""
    is_eot = ids == eot_token_id  # [N, L]
    return jnp.where(is_eot.any(-1), jnp.argmax(is_eot, axis=-1), ids.shape[-1] - 1)


class VisionEmbeddings(nn.Module):
    """Patchify with a bias-free conv, prepend the class token, add positions.

    Attributes:
      config: image tower geometry.
      dtype: compute dtype.
    """

    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,))
        patches = nn.Conv(
            c.hidden_size, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
            padding="VALID", use_bias=False, dtype=self.dtype, name="patch_embedding",
        )(pixels.astype(self.dtype))  # [N, R/p, R/p, W]
        n = patches.shape[0]
        patches = patches.reshape(n, -1, c.hidden_size)  # [N, P, W]
        cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (n, 1, c.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)  # [N, P+1, W]
        positions = nn.Embed(c.num_patches + 1, c.hidden_size, name="position_embedding").embedding
        return x + positions.astype(self.dtype)


class VisionTransformer(nn.Module):
    """ViT image tower; returns the post-LayerNorm class token (and, with `grid`, the patch tokens).

    Attributes:
      config: image tower geometry.
      dtype: compute dtype.
    """

    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array, grid: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """pixels [N, R, R, 3] -> class token [N, W]; with `grid`, also the patch tokens of the last
        block [N, P, W] (transformers' `last_hidden_state[:, 1:]`, before the final LayerNorm)."""
        c = self.config
        ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name=name)
        x = VisionEmbeddings(c, self.dtype, name="embeddings")(pixels)  # [N, P+1, W]
        x = ln("pre_layrnorm")(x)  # sic: the checkpoint's spelling
        x = Encoder(
            c.num_layers, c.num_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
            causal=False, dtype=self.dtype, name="encoder",
        )(x)
        pooled = ln("post_layernorm")(x[:, 0])  # [N, W]
        return (pooled, x[:, 1:]) if grid else pooled


class CLIP(nn.Module):
    """Both towers and their projections into the D-dim joint space.

    Call through `apply(..., method=...)` with one of `encode_image`, `encode_image_grid`,
    `encode_text`, `embed_tokens`, `encode_text_embeddings`, `encode_text_prefix`,
    `encode_text_after_prefix`; `__call__` runs all (used to initialise every parameter at once).

    Attributes:
      config: the checkpoint's geometry.
      dtype: compute dtype (float32 default; bfloat16 on TPU/GPU). Parameters
        stay in their stored dtype.
      remat_text: rematerialise the text blocks when differentiating through
        the text tower (token-mode prompt learning): every (image, class) pair's
        activations would otherwise be kept for the backward pass.
    """

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    remat_text: bool = False

    def setup(self) -> None:
        c = self.config
        self.text_model = TextTransformer(c.text, self.dtype, self.remat_text)
        self.vision_model = VisionTransformer(c.vision, self.dtype)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init), ())

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """NHWC normalised pixels [N, R, R, 3] -> projected image features [N, D] (not normalised)."""
        return self.visual_projection(self.vision_model(pixels)).astype(jnp.float32)

    def encode_image_grid(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixels -> (projected image features [N, D], the last block's patch tokens [N, P, W]), float32."""
        pooled, grid = self.vision_model(pixels, grid=True)
        return self.visual_projection(pooled).astype(jnp.float32), grid.astype(jnp.float32)

    def encode_text(self, ids: jax.Array) -> jax.Array:
        """Token ids [N, L], L <= context length -> projected text features [N, D] (not normalised)."""
        return self.text_projection(self.text_model(ids)).astype(jnp.float32)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """Token ids [..., L] -> token embeddings [..., L, W] (no positions), the prompt-learning seam."""
        return self.text_model.embed_tokens(ids)

    def encode_text_embeddings(self, x: jax.Array, eot_pos: jax.Array) -> jax.Array:
        """Token embeddings [N, L, W] + first-EOT positions [N] -> projected text features [N, D]."""
        return self.text_projection(self.text_model.encode_embeddings(x, eot_pos)).astype(jnp.float32)

    def encode_text_prefix(self, x: jax.Array, length: jax.Array) -> list[PrefixKV]:
        """Prefix token embeddings [C, P, W] and valid lengths [C] -> per-layer cached K/V."""
        return self.text_model.encode_prefix(x, length)

    def encode_text_after_prefix(self, x: jax.Array, caches: list[PrefixKV]) -> jax.Array:
        """Suffix embeddings [B, C, S, W] after cached prefixes -> projected features [B, C, D], pooled
        at the last suffix position. Equals `encode_text_embeddings` of prefix + suffix (causal attention)."""
        return self.text_projection(self.text_model.encode_after_prefix(x, caches)).astype(jnp.float32)

    def __call__(self, pixels: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(pixels), self.encode_text(ids)
