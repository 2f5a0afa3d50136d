"""`LanguageModel`: a frozen decoder with its tokenizer, jitted forward and generation."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aape_jax.lm import generate as gen
from aape_jax.lm.config import LMConfig
from aape_jax.lm.model import CausalLM
from aape_jax.lm.tokenizer import Tokenizer


class LanguageModel:
    """A frozen causal LM: parameters are arguments of every jitted call, never closed over.

    Attributes:
      params: Flax parameter tree (in `param_dtype`).
      config: geometry and special ids.
      tokenizer: the checkpoint's tokenizer.
      dtype: compute dtype.
      source: where it was loaded from.
    """

    def __init__(self, params: Any, config: LMConfig, tokenizer: Tokenizer, dtype: Any = jnp.float32,
                 source: str = ""):
        self.params, self.config, self.tokenizer, self.dtype, self.source = params, config, tokenizer, dtype, source
        self.module = CausalLM(config, dtype=dtype)
        self._forward = jax.jit(functools.partial(gen.forward, config=config, dtype=dtype))
        self._embed = jax.jit(lambda params, ids: self.module.apply({"params": params}, ids, method=CausalLM.embed))
        self._decode = jax.jit(gen.decode, static_argnames="settings")

    # ------------------------------------------------------------------ text <-> ids

    def encode(self, texts: Sequence[str], padding_side: str = "left",
               max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, L] int32, mask [N, L] bool) of `texts`, padded on `padding_side`."""
        return self.tokenizer.encode(texts, padding_side=padding_side, max_length=max_length)

    def tokenize(self, texts: Sequence[str], padding_side: str = "left") -> np.ndarray:
        """Token ids [N, L] int32 (padded with the pad id; `encode` also returns the mask)."""
        return self.encode(texts, padding_side)[0]

    def decode(self, tokens: Any) -> list[str]:
        """Texts of generated tokens [N, T], each cut at its first EOS."""
        return self.tokenizer.decode(tokens, stop_ids=self.config.eos_token_ids)

    # ------------------------------------------------------------------ forward

    def _check_ids(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer array [N, L], got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = int(ids.max() if ids.max() >= self.config.vocab_size else ids.min())
            raise ValueError(f"token id {bad} is outside the embedding table of {self.config.vocab_size} rows")
        return ids.astype(np.int32)

    def _mask(self, attention_mask: Any, shape: tuple[int, int], length: int) -> jax.Array:
        if attention_mask is None:
            mask = np.ones(shape, bool)
        else:
            mask = np.asarray(attention_mask).astype(bool)
            if mask.shape != shape:
                raise ValueError(f"attention_mask has shape {mask.shape}; the inputs have {shape}")
        if self.config.rope is None and length > self.config.max_positions:
            raise ValueError(f"{length} positions exceed this {self.config.model_type} model's "
                             f"{self.config.max_positions} learned positions (n_positions)")
        return jnp.asarray(mask)

    def embed(self, ids: Any) -> jax.Array:
        """Token embeddings [N, L, W] in the compute dtype: where soft prompt tokens join the text."""
        return self._embed(self.params, self._check_ids(ids))

    def logits(self, ids: Any, attention_mask: Any = None) -> jax.Array:
        """Logits [N, L, V] float32 of ids [N, L]; mask [N, L] (1 = real token, either padding side)."""
        return self.logits_from_embeds(self.embed(ids), attention_mask)

    def logits_from_embeds(self, embeds: Any, attention_mask: Any = None) -> jax.Array:
        """Logits [N, L, V] float32 of input embeddings [N, L, W] (soft tokens and `embed` output)."""
        embeds = self._check_embeds(embeds)
        mask = self._mask(attention_mask, embeds.shape[:2], embeds.shape[1])
        return self._forward(self.params, embeds, mask)

    def _check_embeds(self, embeds: Any) -> jax.Array:
        embeds = jnp.asarray(embeds)
        if embeds.ndim != 3 or embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"embeds must be [N, L, {self.config.hidden_size}], got {embeds.shape}")
        return embeds

    # ------------------------------------------------------------------ generation

    def generate(self, ids: Any, attention_mask: Any = None, **kwargs) -> np.ndarray:
        """New tokens [N, max_new_tokens] int32 after the prompts ids [N, L] (left-padded).

        Keyword arguments as `generate_from_embeds`.
        """
        return self.generate_from_embeds(self.embed(ids), attention_mask, **kwargs)

    def generate_from_embeds(self, embeds: Any, attention_mask: Any = None, *, max_new_tokens: int = 20,
                             method: str = "greedy", num_beams: int = 4, length_penalty: float = 1.0,
                             top_p: float = 0.9, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """New tokens [N, max_new_tokens] int32 after prompt embeddings [N, L, W].

        Rows that finish (EOS) early are filled with the pad id. One jitted loop
        per (shapes, method, max_new_tokens, num_beams, length_penalty); `top_p`,
        `temperature` and `seed` do not retrace.

        Args:
          embeds: prompt embeddings, e.g. soft prompt tokens then `embed(ids)`.
          attention_mask: [N, L], 1 on real tokens; padding must be on the left.
          max_new_tokens: T, tokens to generate per row.
          method: "greedy", "beam" (with `num_beams`, `length_penalty`, as transformers'
            `num_beams=..., early_stopping=False`) or "top_p" (with `top_p`,
            `temperature`, `seed`).
        """
        if method not in gen.METHODS:
            raise ValueError(f"method must be one of {', '.join(gen.METHODS)}, got {method!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if method == "beam" and (not isinstance(num_beams, int) or num_beams < 1):
            raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
        if method == "top_p" and not (0.0 < top_p <= 1.0 and temperature > 0.0):
            raise ValueError(f"top_p must be in (0, 1] and temperature > 0, got {top_p!r}, {temperature!r}")
        embeds = self._check_embeds(embeds)
        mask = self._mask(attention_mask, embeds.shape[:2], embeds.shape[1] + max_new_tokens)
        if not bool(jnp.all(mask[:, -1])):
            raise ValueError("generate needs left padding: the last position of every row must be a real token "
                             "(tokenize with padding_side='left')")
        pad = self.tokenizer.pad_id
        settings = gen.Settings(self.config, self.dtype, max_new_tokens, method,
                                num_beams if method == "beam" else 1, float(length_penalty),
                                0 if pad is None else int(pad))
        tokens = self._decode(self.params, embeds, mask, jax.random.key(seed), jnp.float32(top_p),
                              jnp.float32(temperature), settings=settings)
        return np.asarray(tokens)
