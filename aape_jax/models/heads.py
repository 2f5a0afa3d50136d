"""Task heads: each turns the AAPE into per-image class weights, in its own way.

A head is a small frozen description (`FeatureHead`, `TokenHead`, built from
config `model.combine` by `make_head`) that knows its trainable Flax module,
whether the frozen text tower runs, what it can precompute per class list
(`class_cache`) and how it turns its output into class weights
(`class_weights`). Nothing else decides by the mode's name.

  * `TokenHead` ("token", the paper-faithful reading): a learned linear map
    takes the AAPE to `num_tokens` token embeddings inserted into each class's
    template; the frozen text encoder, through the CLIP seam, gives `w_c(x)`
    for every (image, class) pair, like CoCoOp. Where (`position`):
      - "prefix" (default): right after the start token,
        `[SOS] [AAPE] a photo of a {class}. [EOT]`;
      - "suffix": right before the end-of-text token, after the whole template
        text including its final punctuation,
        `[SOS] a photo of a {class}. [AAPE] [EOT]`. Everything before the AAPE
        is then the same for every image, so the causal text tower runs over
        that class prefix once per class (keys/values cached per layer,
        `class_cache`) and per (image, class) only the T+1 positions
        [AAPE..., EOT] run (equal to the plain path within float error). A
        bidirectional text tower (SigLIP) lets every position see the AAPE, so
        there it runs the whole sequence per pair instead.
  * `FeatureHead` ("feature", fast): `w_c(x) = n(t_c + P a(x))` with `t_c` the
    precomputed template embedding; no text encoder in the step. `P` starts at
    zero, so an untrained head is zero-shot CLIP.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from aape_jax.clip.backbone import Backbone
from aape_jax.clip.config import TextConfig
from aape_jax.clip.model import PrefixKV
from aape_jax.clip.tokenizer import Tokenizer
from aape_jax.numerics import l2_normalize

COMBINE_MODES = ("token", "feature")
TOKEN_POSITIONS = ("prefix", "suffix")
# Activation memory the whole-sequence token path may keep for its backward pass (config
# `model.text_memory_gb`). Chosen by measurement (ViT-B/16 prefix step, B=32, C=50, 2-core CPU):
# smaller chunks ran faster, 2.5 images/s at 0.25 GB (one class per chunk) against 2.2 at 1 GB,
# 1.5 at 2 GB, 1.0 at 4 GB and 0.9 with all classes at once (7.8 GB). Accelerators, with more
# parallel work per matmul to fill, may prefer larger chunks (not measured here).
TEXT_MEMORY_GB = 0.25


def pair_activation_bytes(text: TextConfig, length: int, dtype_bytes: int) -> int:
    """Bytes the backward pass keeps of one sequence of `length` positions through every text block.

    Per block and position about 10 W + 2 I values of the compute dtype (the
    block's input, LayerNorms, q/k/v, attention output, residuals, the MLP's two
    [I] tensors) plus the fp32 attention logits and weights (2 H L): calibrated
    on XLA's buffer assignment of the ViT-B/16 text tower's backward pass (within
    1% at 12 positions); about 20% under it for a W=256 tower (the tests bound
    the ratio)."""
    w, i, h, n = text.hidden_size, text.intermediate_size, text.num_heads, length
    return text.num_layers * (n * (10 * w + 2 * i) * dtype_bytes + 2 * h * n * n * 4)


def classes_per_chunk(pairs_per_class: int, classes: int, text: TextConfig, length: int, dtype_bytes: int,
                      budget_bytes: float) -> int:
    """The most classes whose (image, class) sequences fit `budget_bytes` of kept activations (at least 1;
    `classes` when all fit, which needs no rematerialisation)."""
    per_class = pairs_per_class * pair_activation_bytes(text, length, dtype_bytes)
    return int(max(1, min(classes, budget_bytes // per_class)))


@flax.struct.dataclass
class ClassText:
    """The candidate classes' template text, as every head reads it (built once per class list).

    Attributes:
      features: normalised template embeddings t_c [C, D].
      ids: template token ids [C, L], L just long enough for the inserted tokens.
      eot: position of each template's end-of-text token [C] before insertion.
      text_start: index of the first text token (1 after CLIP's [SOS], 0 for
        SigLIP): where "prefix" tokens go.
    """

    features: jax.Array
    ids: jax.Array
    eot: jax.Array
    text_start: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def num_classes(self) -> int:
        return self.features.shape[0]


def template_ids(tokenizer: Tokenizer, prompts: list[str], num_tokens: int,
                 full_context: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [C, L] and EOT positions [C] with room for `num_tokens` inserted tokens.

    L is the shortest length that holds every prompt plus the inserted tokens,
    so a causal text encoder runs on no more positions than it needs; with
    `full_context` (a bidirectional tower pooled at the last position, SigLIP)
    L + num_tokens is the whole context, the padding it was trained with
    (`num_tokens` trailing pads make way for the tokens).
    """
    ids = tokenizer(prompts)
    eot = tokenizer.eot_positions(ids)
    needed = int(eot.max()) + 1 + num_tokens
    if needed > tokenizer.context_length:
        worst = prompts[int(eot.argmax())]
        raise ValueError(
            f"the template {worst!r} plus {num_tokens} AAPE token(s) needs {needed} positions, "
            f"more than the text encoder's context of {tokenizer.context_length}"
        )
    length = tokenizer.context_length if full_context else needed
    return ids[:, : length - num_tokens].astype(np.int32), eot.astype(np.int32)


def insert_tokens(template_embeds: jax.Array, eot: jax.Array, tokens: jax.Array,
                  position: str = "prefix", text_start: int = 1) -> tuple[jax.Array, jax.Array]:
    """Inserts per-image tokens at `text_start` ("prefix": after [SOS] if any) or before [EOT] ("suffix")
    of every class template.

    Args:
      template_embeds: token embeddings of the templates [C, L, W].
      eot: EOT positions of the templates [C].
      tokens: per-image prompt tokens [B, T, W].
      position: "prefix" or "suffix".
      text_start: index of the templates' first text token (1 for CLIP, 0 for SigLIP).

    Returns:
      Embeddings [B*C, L+T, W] (image-major) and their EOT positions [B*C].
    """
    b, t, w = tokens.shape
    c, length, _ = template_embeds.shape
    if position == "suffix":
        j = jnp.arange(length + t)[None, :]  # [1, L+T]
        is_token = (j >= eot[:, None]) & (j < eot[:, None] + t)  # [C, L+T]
        src = jnp.clip(jnp.where(j < eot[:, None], j, j - t), 0, length - 1)  # [C, L+T]
        tmpl = jnp.take_along_axis(template_embeds, src[:, :, None], axis=1)  # [C, L+T, W]
        tok = tokens.astype(template_embeds.dtype)[:, jnp.clip(j - eot[:, None], 0, t - 1)]  # [B, C, L+T, W]
        x = jnp.where(is_token[None, :, :, None], tok, tmpl[None]).reshape(b * c, length + t, w)  # [B*C, L+T, W]
        return x, jnp.broadcast_to(eot[None] + t, (b, c)).reshape(b * c)
    if position != "prefix":
        raise ValueError(f"token position is {position!r}; choose one of {TOKEN_POSITIONS}")
    s = text_start
    sos = jnp.broadcast_to(template_embeds[None, :, :s], (b, c, s, w))  # [B, C, s, W]
    inserted = jnp.broadcast_to(tokens[:, None].astype(template_embeds.dtype), (b, c, t, w))  # [B, C, T, W]
    rest = jnp.broadcast_to(template_embeds[None, :, s:], (b, c, length - s, w))  # [B, C, L-s, W]
    x = jnp.concatenate([sos, inserted, rest], axis=2).reshape(b * c, length + t, w)  # [B*C, L+T, W]
    positions = jnp.broadcast_to(eot[None] + t, (b, c)).reshape(b * c)  # [B*C]
    return x, positions


@flax.struct.dataclass
class ClassPrefixCache:
    """The frozen text tower's per-layer keys/values over each class's template before [EOT].

    Attributes:
      layers: one `PrefixKV` per text layer (keys/values [C, P, H, Dh], valid lengths [C] = EOT positions).
      eot_embed: the templates' [EOT] token embeddings [C, W].
    """

    layers: list[PrefixKV]
    eot_embed: jax.Array


def class_prefix_cache(class_text: ClassText, clip_module: Backbone, clip_params: Any) -> ClassPrefixCache:
    """Runs the causal text tower once per class over its template up to (not including) [EOT].

    Depends only on the class list and CLIP: compute it once per class list and
    reuse it for every image (inference), or once per step (training).
    """
    embeds = clip_module.apply({"params": clip_params}, class_text.ids, method="embed_tokens")  # [C, L, W]
    eot = class_text.eot.astype(jnp.int32)  # [C]
    prefix = embeds[:, : embeds.shape[1] - 1]  # [C, P, W], P = L-1 >= every EOT position
    layers = clip_module.apply({"params": clip_params}, prefix, eot, method="encode_text_prefix")
    eot_embed = jnp.take_along_axis(embeds, eot[:, None, None], axis=1)[:, 0]  # [C, W]
    return ClassPrefixCache(layers=layers, eot_embed=eot_embed)


class FeatureProjection(nn.Module):
    """`P a(x)`, the feature head's trainable map; P is zero at initialisation.

    Attributes:
      embed_dim: D.
    """

    embed_dim: int

    @nn.compact
    def __call__(self, aape: jax.Array) -> jax.Array:
        return nn.Dense(self.embed_dim, use_bias=False, kernel_init=nn.initializers.zeros, name="proj")(aape)


class TokenProjection(nn.Module):
    """A linear map from the AAPE to `num_tokens` token embeddings of width W.

    Attributes:
      num_tokens: prompt tokens inserted per image.
      token_width: W, the text encoder's token-embedding width.
      init_std: std of the map's initial weights (CLIP's token embeddings have std ~0.02).
    """

    num_tokens: int
    token_width: int
    init_std: float = 0.02

    @nn.compact
    def __call__(self, aape: jax.Array) -> jax.Array:
        out = nn.Dense(self.num_tokens * self.token_width, kernel_init=nn.initializers.normal(self.init_std),
                       name="proj")(aape)  # [B, T*W]
        return out.reshape(aape.shape[0], self.num_tokens, self.token_width)  # [B, T, W]


@dataclasses.dataclass(frozen=True)
class FeatureHead:
    """`w_c(x) = n(t_c + P a(x))`: template embeddings shifted per image, no text tower.

    Attributes:
      embed_dim: D, CLIP's joint-space width.
    """

    embed_dim: int
    uses_text_tower: ClassVar[bool] = False
    num_tokens: ClassVar[int] = 0

    def module(self) -> nn.Module:
        return FeatureProjection(self.embed_dim)

    def class_cache(self, class_text: ClassText, clip_module: Backbone | None, clip_params: Any) -> None:
        """Nothing to precompute beyond the template features."""
        return None

    def class_weights(self, head_out: jax.Array, class_text: ClassText, clip_module: Backbone | None = None,
                      clip_params: Any = None, cache: None = None) -> jax.Array:
        """`P a(x)` [B, D] -> normalised per-image class weights [B, C, D]."""
        return l2_normalize(class_text.features[None] + head_out[:, None])


@dataclasses.dataclass(frozen=True)
class TokenHead:
    """Per-image tokens inserted into every class's template, through the frozen text tower.

    Attributes:
      num_tokens: T, tokens per image (the AAPE's; CoOp's context length for the baselines).
      token_width: W, the text encoder's token-embedding width.
      position: "prefix" (after [SOS]) or "suffix" (before [EOT], class prefixes cached).
      text_memory_gb: activations the whole-sequence path may keep for its
        backward pass (`classes_per_chunk`); results do not depend on it.
    """

    num_tokens: int
    token_width: int
    position: str = "prefix"
    text_memory_gb: float = TEXT_MEMORY_GB
    uses_text_tower: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.position not in TOKEN_POSITIONS:
            raise ValueError(f"model.token_position is {self.position!r}; choose one of {TOKEN_POSITIONS}")
        if self.num_tokens < 1:
            raise ValueError(f"model.num_tokens must be >= 1, got {self.num_tokens}")
        if not self.text_memory_gb > 0:
            raise ValueError(f"model.text_memory_gb must be > 0, got {self.text_memory_gb}")

    def module(self) -> nn.Module:
        return TokenProjection(self.num_tokens, self.token_width)

    def class_cache(self, class_text: ClassText, clip_module: Backbone, clip_params: Any) -> ClassPrefixCache | None:
        """For "suffix" on a causal text tower, the classes' `class_prefix_cache` (what every image shares);
        else None."""
        return class_prefix_cache(class_text, clip_module, clip_params) if self._caches(clip_module) else None

    def _caches(self, clip_module: Backbone) -> bool:
        # The cache holds what the template computes before the tokens; a bidirectional
        # tower (SigLIP) lets the template attend to them, so nothing can be cached.
        return self.position == "suffix" and clip_module.config.text.causal

    def class_weights(self, head_out: jax.Array, class_text: ClassText, clip_module: Backbone, clip_params: Any,
                      cache: ClassPrefixCache | None = None, *, use_prefix_cache: bool = True,
                      class_chunk: int | None = None) -> jax.Array:
        """Prompt tokens [B, T, W] -> normalised per-image class weights [B, C, D].

        Args:
          head_out: the prompt tokens [B, T, W] (a batch of 1 broadcasts, for CoOp's shared context).
          class_text: the candidate classes.
          clip_module, clip_params: the frozen CLIP, passed as arguments.
          cache: "suffix": the classes' `class_cache` (else computed here).
          use_prefix_cache: "suffix": run the class prefixes once and only
            [AAPE..., EOT] per (image, class). False: the plain path, the whole
            sequence per pair (the reference the cached path is tested against),
            which a bidirectional text tower (SigLIP) always takes.
          class_chunk: the whole-sequence path runs the classes in chunks of this
            size, each rematerialised as a whole in the backward pass, so the
            activations kept grow with the chunk, not with B x C; `>= C`: all
            at once, nothing recomputed. None: the most that fit
            `text_memory_gb` (`classes_per_chunk`). The result does not depend on it.
        """
        b, c = head_out.shape[0], class_text.num_classes
        if use_prefix_cache and self._caches(clip_module):
            cache = cache if cache is not None else class_prefix_cache(class_text, clip_module, clip_params)
            t, w = head_out.shape[1:]
            tokens = jnp.broadcast_to(head_out[:, None].astype(cache.eot_embed.dtype), (b, c, t, w))  # [B, C, T, W]
            eot = jnp.broadcast_to(cache.eot_embed[None, :, None], (b, c, 1, w))  # [B, C, 1, W]
            z = clip_module.apply({"params": clip_params}, jnp.concatenate([tokens, eot], axis=2), cache.layers,
                                  method="encode_text_after_prefix")  # [B, C, D]
            return l2_normalize(z)
        embeds = clip_module.apply({"params": clip_params}, class_text.ids, method="embed_tokens")  # [C, L, W]
        if class_chunk is None:
            length = class_text.ids.shape[1] + head_out.shape[1]
            # A symbolic batch (jax.export's "b") cannot size chunks: size them for one image per class.
            pairs = b if isinstance(b, int) else 1
            class_chunk = classes_per_chunk(pairs, c, clip_module.config.text, length,
                                            jnp.dtype(clip_module.dtype).itemsize, self.text_memory_gb * 2**30)
        # The chunks bound the memory: per-block remat inside them (FrozenCLIP.module's) would
        # add a third forward pass for ~20% less memory (XLA's buffers, ViT-B/16).
        tower = clip_module.clone(remat_text=False)

        def encode_pairs(chunk: tuple[jax.Array, jax.Array]) -> jax.Array:
            chunk_embeds, chunk_eot = chunk  # [K, L, W], [K]
            x, eot = insert_tokens(chunk_embeds, chunk_eot, head_out, self.position, class_text.text_start)
            z = tower.apply({"params": clip_params}, x, eot, method="encode_text_embeddings")  # [B*K, D]
            return z.reshape(b, chunk_eot.shape[0], -1)  # [B, K, D]

        k = class_chunk
        if k < 1:
            raise ValueError(f"class_chunk must be >= 1, got {k}")
        if k >= c:
            return l2_normalize(encode_pairs((embeds, class_text.eot)))  # [B, C, D]
        n = -(-c // k)
        pad = n * k - c  # repeat the last class; its scores are dropped below
        chunks = (jnp.concatenate([embeds, jnp.repeat(embeds[-1:], pad, 0)]).reshape(n, k, *embeds.shape[1:]),
                  jnp.concatenate([class_text.eot, jnp.repeat(class_text.eot[-1:], pad)]).reshape(n, k))
        z = jax.lax.map(jax.checkpoint(encode_pairs), chunks)  # [n, B, K, D]
        return l2_normalize(z.transpose(1, 0, 2, 3).reshape(b, n * k, -1)[:, :c])  # [B, C, D]


Head = FeatureHead | TokenHead


def make_head(combine: str, embed_dim: int, token_width: int, num_tokens: int = 1,
              token_position: str = "prefix", text_memory_gb: float = TEXT_MEMORY_GB) -> Head:
    """The head of config `model.combine`: the one place the mode's name is read."""
    if combine == "feature":
        return FeatureHead(embed_dim)
    if combine == "token":
        return TokenHead(num_tokens, token_width, token_position, text_memory_gb)
    raise ValueError(f"model.combine is {combine!r}; choose one of {COMBINE_MODES}")


def class_logits(image_features: jax.Array, weights: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """`exp(logit_scale) * cos(f(x), w_c(x))`: [B, D], [B, C, D] -> [B, C]."""
    return jnp.exp(logit_scale) * jnp.einsum("bd,bcd->bc", l2_normalize(image_features), weights)
