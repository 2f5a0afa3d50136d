"""Causal decoders in Flax: GPT-2, GPT-J and the Llama family (Llama, Mistral, Qwen2).

Parameter names follow the Hugging Face checkpoints (`transformer.h_3.attn.c_attn`,
`model.layers_3.self_attn.q_proj`), so loading is renaming (`lm.weights`).
Every module takes token embeddings rather than ids: `CausalLM.embed` is the
seam where soft prompt tokens join the text, as transformers' `inputs_embeds`
(GPT-2 adds its learned positions inside the decoder, after the seam).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aape_jax.lm import layers
from aape_jax.lm.config import LMConfig
from aape_jax.lm.layers import KV


class SelfAttention(nn.Module):
    """Causal self-attention with an optional KV cache; projection names as the family's checkpoints.

    Attributes:
      config: decoder geometry (heads, head width, biases, rotary embedding).
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    config: LMConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, bias: jax.Array, cache: KV | None,
                 index: jax.Array | int) -> tuple[jax.Array, KV]:
        c = self.config
        dense = lambda features, name, use_bias: nn.Dense(features, use_bias=use_bias, dtype=self.dtype,
                                                          param_dtype=self.param_dtype, name=name)
        heads = lambda t, n: t.reshape(*t.shape[:-1], n, c.head_dim)  # [B, T, n, Dh]
        q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        if c.family == "gpt2":  # one fused projection, q | k | v
            q, k, v = jnp.split(dense(q_width + 2 * kv_width, "c_attn", c.qkv_bias)(x), [q_width, q_width + kv_width],
                                axis=-1)
            out_name = "c_proj"
        else:
            q = dense(q_width, "q_proj", c.qkv_bias)(x)
            k = dense(kv_width, "k_proj", c.qkv_bias)(x)
            v = dense(kv_width, "v_proj", c.qkv_bias)(x)
            out_name = "out_proj" if c.family == "gptj" else "o_proj"
        q, k, v = heads(q, c.num_heads), heads(k, c.num_kv_heads), heads(v, c.num_kv_heads)
        if c.rope is not None:
            q, k = layers.apply_rope(q, positions, c.rope), layers.apply_rope(k, positions, c.rope)
        kv = layers.write_cache(cache, k, v, index)
        out = layers.attend(q, kv.k.astype(self.dtype), kv.v.astype(self.dtype), bias)  # [B, T, H * Dh]
        return dense(c.hidden_size, out_name, c.out_bias)(out), kv


class Block(nn.Module):
    """One decoder block: GPT-2 and Llama are sequential (attention, then MLP); GPT-J runs both
    on one LayerNorm's output in parallel.

    Attributes:
      config: decoder geometry.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    config: LMConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, bias: jax.Array, cache: KV | None,
                 index: jax.Array | int) -> tuple[jax.Array, KV]:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if c.family == "llama":
            norm = lambda name: layers.RMSNorm(c.norm_eps, name=name, **kw)
            first, second, attention = "input_layernorm", "post_attention_layernorm", "self_attn"
        else:
            norm = lambda name: nn.LayerNorm(c.norm_eps, name=name, **kw)
            first, second, attention = "ln_1", "ln_2", "attn"
        attention = SelfAttention(c, name=attention, **kw)
        mlp = MLP(c, name="mlp", **kw)
        h = norm(first)(x)
        attn_out, kv = attention(h, positions, bias, cache, index)
        if c.family == "gptj":
            return x + attn_out + mlp(h), kv
        x = x + attn_out
        return x + mlp(norm(second)(x)), kv


class MLP(nn.Module):
    """The feed-forward layer: GPT-2's c_fc -> act -> c_proj, GPT-J's fc_in -> act -> fc_out,
    or Llama's down(act(gate(x)) * up(x)).

    Attributes:
      config: decoder geometry.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    config: LMConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        dense = lambda features, name: nn.Dense(features, use_bias=c.mlp_bias, dtype=self.dtype,
                                                param_dtype=self.param_dtype, name=name)
        act = layers.activation(c.hidden_act)
        if c.family == "llama":
            return dense(c.hidden_size, "down_proj")(act(dense(c.intermediate_size, "gate_proj")(x))
                                                     * dense(c.intermediate_size, "up_proj")(x))
        inner, outer = ("fc_in", "fc_out") if c.family == "gptj" else ("c_fc", "c_proj")
        return dense(c.hidden_size, outer)(act(dense(c.intermediate_size, inner)(x)))


class Decoder(nn.Module):
    """Token embeddings, the blocks and the final norm (`transformer` in GPT-2/GPT-J checkpoints,
    `model` in Llama-family ones).

    Attributes:
      config: decoder geometry.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    config: LMConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        llama = c.family == "llama"
        embed = nn.Embed(c.vocab_size, c.hidden_size, **kw)
        if llama:
            self.embed_tokens = embed
            self.layers = [Block(c, name=f"layers_{i}", **kw) for i in range(c.num_layers)]
            self.norm = layers.RMSNorm(c.norm_eps, **kw)
        else:
            self.wte = embed
            if c.family == "gpt2":
                self.wpe = nn.Embed(c.max_positions, c.hidden_size, **kw)
            self.h = [Block(c, name=f"h_{i}", **kw) for i in range(c.num_layers)]
            self.ln_f = nn.LayerNorm(c.norm_eps, **kw)

    def token_table(self) -> nn.Embed:
        return self.embed_tokens if self.config.family == "llama" else self.wte

    def embed(self, ids: jax.Array) -> jax.Array:
        return self.token_table()(ids)

    def __call__(self, embeds: jax.Array, positions: jax.Array, key_valid: jax.Array,
                 caches: tuple[KV, ...] | None, index: jax.Array | int) -> tuple[jax.Array, tuple[KV, ...]]:
        """Runs the blocks on embeds [B, T, W] at cache slots index .. index + T - 1.

        Args:
          embeds: token (or soft prompt) embeddings, [B, T, W].
          positions: position ids, [B, T] int32.
          key_valid: [B, S] bool, the slots that hold real tokens (S = T without a cache).
          caches: per layer, the KV cache of S slots, or None for a plain forward.
          index: slot of the first of the T tokens.

        Returns:
          (hidden states after the final norm [B, T, W], the caches with these tokens written).
        """
        c = self.config
        x = embeds.astype(self.dtype)
        if c.family == "gpt2":
            x = x + self.wpe(positions)
        query_slots = index + jnp.arange(x.shape[1])
        biases = {w: layers.attention_bias(query_slots, key_valid, w) for w in set(c.sliding_windows)}
        blocks = self.layers if c.family == "llama" else self.h
        written = []
        for i, block in enumerate(blocks):
            x, kv = block(x, positions, biases[c.sliding_windows[i]], None if caches is None else caches[i], index)
            written.append(kv)
        final = self.norm if c.family == "llama" else self.ln_f
        return final(x), tuple(written)


class CausalLM(nn.Module):
    """Decoder plus output head: the tied token table (GPT-2, tied Llamas) or `lm_head`.

    Attributes:
      config: decoder geometry.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    config: LMConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        decoder = Decoder(c, dtype=self.dtype, param_dtype=self.param_dtype)
        if c.family == "llama":
            self.model = decoder
        else:
            self.transformer = decoder
        if not c.tie_word_embeddings:
            self.lm_head = nn.Dense(c.vocab_size, use_bias=c.lm_head_bias, dtype=self.dtype,
                                    param_dtype=self.param_dtype)

    def decoder(self) -> Decoder:
        return self.model if self.config.family == "llama" else self.transformer

    def embed(self, ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, W] of ids [B, T]: what soft prompt tokens are concatenated with."""
        return self.decoder().embed(ids)

    def __call__(self, embeds: jax.Array, positions: jax.Array, key_valid: jax.Array,
                 caches: tuple[KV, ...] | None = None, index: jax.Array | int = 0,
                 last_only: bool = False) -> tuple[jax.Array, tuple[KV, ...]]:
        """Logits (float32) of every position, or of the last only: [B, T or 1, V]; and the caches.

        Arguments as `Decoder.__call__`.
        """
        hidden, written = self.decoder()(embeds, positions, key_valid, caches, index)
        if last_only:
            hidden = hidden[:, -1:]
        if self.config.tie_word_embeddings:
            logits = self.decoder().token_table().attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype(jnp.float32), written
