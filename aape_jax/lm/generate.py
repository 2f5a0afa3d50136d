"""Pure, jittable forward and decoding functions of a `CausalLM`: one trace per decode loop.

The prompt (token or soft embeddings, left-padded) is prefilled into a KV
cache of S = L + T slots; each generated token is one cached step inside a
`lax.while_loop`, so shapes never change and nothing retraces per token.
Greedy and beam search follow transformers' `generate` (v5) step for step:
the same candidate counts, the -1e9 masks, the length penalty and the early
stop heuristic of `early_stopping=False`, so the same logits give the same
tokens. Finished rows are filled with the pad id, as transformers does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from aape_jax.lm.config import LMConfig
from aape_jax.lm.layers import KV, positions_from_mask
from aape_jax.lm.model import CausalLM

METHODS = ("greedy", "beam", "top_p")
_MASKED = -1.0e9  # transformers' beam search masks with this, not -inf


class Settings(NamedTuple):
    """Static decoding settings (a change retraces).

    Attributes:
      config: the model geometry.
      dtype: compute dtype.
      max_new_tokens: T, tokens generated per row.
      method: one of `METHODS`.
      num_beams: beams per row (beam search).
      length_penalty: beam scores are divided by length ** length_penalty.
      pad_id: written after a row has finished.
    """

    config: LMConfig
    dtype: Any
    max_new_tokens: int
    method: str
    num_beams: int = 1
    length_penalty: float = 1.0
    pad_id: int = 0


def forward(params: Any, embeds: jax.Array, mask: jax.Array, *, config: LMConfig, dtype: Any) -> jax.Array:
    """Logits [B, L, V] float32 of embeds [B, L, W] with mask [B, L] (either padding side)."""
    logits, _ = CausalLM(config, dtype=dtype).apply({"params": params}, embeds, positions_from_mask(mask), mask)
    return logits


def _eos(config: LMConfig) -> jax.Array:
    return jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)


class CachedDecoder:
    """The prefill and the one-token step, closed over the parameters inside one trace."""

    def __init__(self, params: Any, settings: Settings):
        self.params, self.s = {"params": params}, settings
        self.model = CausalLM(settings.config, dtype=settings.dtype)

    def prefill(self, embeds: jax.Array, mask: jax.Array):
        """Writes the prompt into fresh caches; returns (last logits [B, V], caches, key_valid [B, S], next positions [B])."""
        c, (b, length, _) = self.s.config, embeds.shape
        slots = length + self.s.max_new_tokens
        caches = tuple(KV(jnp.zeros((b, slots, c.num_kv_heads, c.head_dim), self.s.dtype),
                          jnp.zeros((b, slots, c.num_kv_heads, c.head_dim), self.s.dtype)) for _ in range(c.num_layers))
        key_valid = jnp.concatenate([mask, jnp.zeros((b, self.s.max_new_tokens), bool)], axis=1)
        logits, caches = self.model.apply(self.params, embeds, positions_from_mask(mask), key_valid, caches, 0,
                                          last_only=True)
        return logits[:, 0], caches, key_valid, mask.sum(-1).astype(jnp.int32)

    def step(self, tokens: jax.Array, caches, key_valid: jax.Array, slot: jax.Array, positions: jax.Array):
        """Feeds tokens [B] at cache `slot`; returns (logits [B, V], caches, key_valid)."""
        embeds = self.model.apply(self.params, tokens[:, None], method=CausalLM.embed)
        key_valid = key_valid.at[:, slot].set(True)
        logits, caches = self.model.apply(self.params, embeds, positions[:, None], key_valid, caches, slot,
                                          last_only=True)
        return logits[:, 0], caches, key_valid


def _top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the most likely tokens whose probabilities first reach `top_p` (at least one); others -inf."""
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V], descending
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
    kept = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def _sample_or_greedy(params, embeds, mask, key, top_p, temperature, settings: Settings) -> jax.Array:
    dec = CachedDecoder(params, settings)
    length, steps = embeds.shape[1], settings.max_new_tokens
    logits, caches, key_valid, positions = dec.prefill(embeds, mask)
    eos = _eos(settings.config)
    out = jnp.full((embeds.shape[0], steps), settings.pad_id, jnp.int32)
    done = jnp.zeros((embeds.shape[0],), bool)

    def pick(logits, i):
        if settings.method == "greedy":
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        filtered = _top_p_filter(logits / temperature, top_p)
        return jax.random.categorical(jax.random.fold_in(key, i), filtered, axis=-1).astype(jnp.int32)

    def body(state):
        i, logits, caches, key_valid, positions, out, done = state
        token = jnp.where(done, settings.pad_id, pick(logits, i))
        out = out.at[:, i].set(token)
        done = done | jnp.isin(token, eos)
        logits, caches, key_valid = dec.step(token, caches, key_valid, length + i, positions)
        return i + 1, logits, caches, key_valid, positions + 1, out, done

    def cond(state):
        return (state[0] < steps) & ~jnp.all(state[-1])

    state = jax.lax.while_loop(cond, body, (jnp.int32(0), logits, caches, key_valid, positions, out, done))
    return state[5]


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, N, ...] at index [B, M] along axis 1 -> [B, M, ...]."""
    return jnp.take_along_axis(x, index.reshape(*index.shape, *([1] * (x.ndim - 2))), axis=1)


def _beam_search(params, embeds, mask, settings: Settings) -> jax.Array:
    dec = CachedDecoder(params, settings)
    b, length = embeds.shape[:2]
    k, steps, lp = settings.num_beams, settings.max_new_tokens, settings.length_penalty
    eos = _eos(settings.config)
    keep = max(2, 1 + len(settings.config.eos_token_ids)) * k  # candidates per row, as transformers
    logits, caches, key_valid, positions = dec.prefill(embeds, mask)
    # Every beam starts from the same prompt: prefill once, then copy per beam.
    logits, caches, key_valid, positions = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0),
                                                        (logits, caches, key_valid, positions))
    vocab = logits.shape[-1]
    running = jnp.full((b, k, steps), settings.pad_id, jnp.int32)
    running_scores = jnp.zeros((b, k)).at[:, 1:].set(_MASKED)  # only beam 0 expands at first
    best = jnp.full((b, k, steps), settings.pad_id, jnp.int32)
    best_scores = jnp.full((b, k), _MASKED)
    finished = jnp.zeros((b, k), bool)
    improvable = jnp.ones((b, 1), bool)
    top_k_mask = jnp.arange(keep) < k

    def body(state):
        i, logits, caches, key_valid, positions, running, running_scores, best, best_scores, finished, improvable, _ = state
        length_norm = (i + 1).astype(jnp.float32) ** lp
        scores = jax.nn.log_softmax(logits, axis=-1).reshape(b, k, vocab) + running_scores[..., None]
        cand_scores, cand = jax.lax.top_k(scores.reshape(b, k * vocab), keep)  # [B, keep]
        source, token = cand // vocab, (cand % vocab).astype(jnp.int32)
        cand_seqs = _gather(running, source).at[:, :, i].set(token)  # [B, keep, T]
        stops = jnp.isin(token, eos) | (i + 1 >= steps)
        # The best `k` candidates that did not stop continue.
        live_scores = cand_scores + stops * _MASKED
        _, nxt = jax.lax.top_k(live_scores, k)
        running, running_scores, parent = _gather(cand_seqs, nxt), _gather(live_scores, nxt), _gather(source, nxt)
        # Candidates among the top `k` that stopped compete with the finished hypotheses.
        stopped = stops & top_k_mask
        final = cand_scores / length_norm + (~improvable) * _MASKED + (~stopped) * _MASKED
        merged = jnp.concatenate([best_scores, final], axis=1)
        _, winners = jax.lax.top_k(merged, k)
        best = _gather(jnp.concatenate([best, cand_seqs], axis=1), winners)
        best_scores = _gather(merged, winners)
        finished = _gather(jnp.concatenate([finished, stopped], axis=1), winners)
        rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
        caches, key_valid, positions = jax.tree.map(lambda x: x[rows], (caches, key_valid, positions))
        worst = jnp.where(finished, jnp.min(best_scores, axis=1, keepdims=True), _MASKED)
        improvable &= jnp.any(running_scores[:, :1] / length_norm > worst, axis=-1, keepdims=True)
        go = jnp.any(improvable) & ~jnp.all(stops)
        logits, caches, key_valid = dec.step(running[:, :, i].reshape(-1), caches, key_valid, length + i, positions)
        return (i + 1, logits, caches, key_valid, positions + 1, running, running_scores, best, best_scores,
                finished, improvable, go)

    def cond(state):
        return (state[0] < steps) & state[-1]

    state = (jnp.int32(0), logits, caches, key_valid, positions, running, running_scores, best, best_scores,
             finished, improvable, jnp.bool_(True))
    return jax.lax.while_loop(cond, body, state)[7][:, 0]


def decode(params: Any, embeds: jax.Array, mask: jax.Array, key: jax.Array, top_p: jax.Array,
           temperature: jax.Array, settings: Settings) -> jax.Array:
    """New tokens [B, T] int32 after left-padded prompts embeds [B, L, W] / mask [B, L].

    `key`, `top_p` and `temperature` are used by top-p sampling only; they are
    traced, so changing them does not retrace.
    """
    if settings.method == "beam":
        return _beam_search(params, embeds, mask, settings)
    return _sample_or_greedy(params, embeds, mask, key, top_p, temperature, settings)
