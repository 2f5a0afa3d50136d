"""Pieces every decoder family shares: attention with a static-shape KV cache, rotary embeddings,
RMSNorm, activations and the attention mask.

The KV cache is explicit: each layer takes its `(k, v)` arrays of a fixed
length S and returns them with the new keys written at slot `index`, so a
whole decode loop traces once. Attention is masked by an additive bias built
from slot indices and a per-slot validity mask (left padding is invalid), so
the same code serves the uncached forward, the prefill and one decode step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from aape_jax.lm.config import RopeConfig

NEG_INF = float(jnp.finfo(jnp.float32).min)


class KV(NamedTuple):
    """One layer's cache: keys and values of S slots, [B, S, KVH, Dh] each."""

    k: jax.Array
    v: jax.Array


def activation(name: str):
    """The MLP activation of transformers' ACT2FN under `name`."""
    return {
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "silu": jax.nn.silu,
        "relu": jax.nn.relu,
    }[name]


def attention_bias(query_slots: jax.Array, key_valid: jax.Array, window: int | None) -> jax.Array:
    """Additive mask: a query at slot q sees valid keys at slots <= q (and > q - window).

    Args:
      query_slots: [Tq] int32, the cache slots of the queries.
      key_valid: [B, S] bool, which slots hold a real (not padding) token.
      window: sliding-window span, or None.

    Returns:
      [B, 1, Tq, S] float32: 0 where attention is allowed, the float32 minimum elsewhere.
    """
    keys = jnp.arange(key_valid.shape[1])
    allowed = keys[None, :] <= query_slots[:, None]  # [Tq, S]
    if window is not None:
        allowed &= keys[None, :] > query_slots[:, None] - window
    allowed = allowed[None] & key_valid[:, None, :]  # [B, Tq, S]
    return jnp.where(allowed, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids that skip padding: cumsum(mask) - 1 on real tokens, 1 on pads (as transformers' generate)."""
    mask = mask.astype(jnp.int32)
    return jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 1)


def _inverse_frequencies(rope: RopeConfig) -> jax.Array:
    inv = 1.0 / (rope.theta ** (jnp.arange(0, rope.dim, 2, dtype=jnp.float32) / rope.dim))  # [dim/2]
    if rope.kind == "linear":
        return inv / rope.factor
    if rope.kind == "llama3":
        low_wavelen = rope.original_max_positions / rope.low_freq_factor
        high_wavelen = rope.original_max_positions / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    return inv


def apply_rope(x: jax.Array, positions: jax.Array, rope: RopeConfig) -> jax.Array:
    """Rotates the first `rope.dim` dimensions of each head of x [B, T, H, Dh] by `positions` [B, T]."""
    angles = positions[..., None].astype(jnp.float32) * _inverse_frequencies(rope)  # [B, T, dim/2]
    rot, rest = x[..., :rope.dim].astype(jnp.float32), x[..., rope.dim:]
    if rope.interleaved:  # GPT-J: pairs (2i, 2i+1)
        cos = jnp.repeat(jnp.cos(angles), 2, axis=-1)[:, :, None]  # [B, T, 1, dim]
        sin = jnp.repeat(jnp.sin(angles), 2, axis=-1)[:, :, None]
        pairs = rot.reshape(*rot.shape[:-1], -1, 2)  # [B, T, H, dim/2, 2]
        turned = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(rot.shape)
    else:  # Llama: halves (i, i + dim/2)
        cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None]
        sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None]
        first, second = jnp.split(rot, 2, axis=-1)
        turned = jnp.concatenate([-second, first], axis=-1)
    out = (rot * cos + turned * sin).astype(x.dtype)
    return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """Softmax attention in float32 with grouped key/value heads.

    Args:
      q: [B, Tq, H, Dh]; k, v: [B, S, KVH, Dh] with H a multiple of KVH (query head h uses
        key head h // (H / KVH), as transformers' `repeat_kv`).
      bias: [B, 1, Tq, S] additive mask.

    Returns:
      [B, Tq, H * Dh] in v's dtype.
    """
    b, tq, h, d = q.shape
    kvh = k.shape[2]
    q = q.reshape(b, tq, kvh, h // kvh, d)  # [B, Tq, KVH, G, Dh]
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    weights = jax.nn.softmax(scores + bias[:, :, None], axis=-1).astype(v.dtype)  # [B, KVH, G, Tq, S]
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, v)  # [B, Tq, KVH, G, Dh]
    return out.reshape(b, tq, h * d)


def write_cache(cache: KV | None, k: jax.Array, v: jax.Array, index: jax.Array | int) -> KV:
    """The layer's keys/values after this call: k, v themselves without a cache, else written at slot `index`."""
    if cache is None:
        return KV(k, v)
    start = (0, index, 0, 0)
    return KV(jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start),
              jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start))


class RMSNorm(nn.Module):
    """transformers' LlamaRMSNorm: normalised in float32, cast back, then scaled.

    Attributes:
      eps: added to the mean square.
      dtype: output dtype.
      param_dtype: dtype of `scale`.
    """

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale.astype(self.dtype) * normed.astype(self.dtype)).astype(self.dtype)
