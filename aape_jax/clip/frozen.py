"""`FrozenCLIP`: a loaded CLIP (or SigLIP) with jitted encoders, its tokenizer and preprocessing.

The encoders are module-level `jax.jit` functions that take the parameters as
an argument (never closed over as constants, so one compiled program serves
any checkpoint of the same geometry, and the weights are not baked into HLO).
Batches are cut into chunks of at most `max_batch` rows and padded up to a
power-of-two bucket, so arbitrary batch sizes compile a handful of programs.
CLIP text is trimmed to the longest real prompt (rounded up to
`TEXT_LENGTH_BUCKET`): causal attention and pooling at the first end-of-text
token make later positions irrelevant to the output. SigLIP text is not: its
bidirectional tower, pooled at the last position, sees the padding too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aape_jax.clip.backbone import Backbone, backbone
from aape_jax.clip.config import CLIPConfig
from aape_jax.clip.model import first_eot
from aape_jax.clip.preprocess import ImageLike, ImageTransform, eval_transform
from aape_jax.clip.tokenizer import Tokenizer
from aape_jax.numerics import padded_batches

TEXT_LENGTH_BUCKET = 8
MIN_BATCH_BUCKET = 8


@functools.partial(jax.jit, static_argnames=("module",))
def _encode_image(module: Backbone, params: Any, pixels: jax.Array) -> jax.Array:
    return module.apply({"params": params}, pixels, method="encode_image")


@functools.partial(jax.jit, static_argnames=("module",))
def _encode_image_grid(module: Backbone, params: Any, pixels: jax.Array) -> jax.Array:
    pooled, grid = module.apply({"params": params}, pixels, method="encode_image_grid")
    return jnp.concatenate([pooled, grid.reshape(grid.shape[0], -1)], axis=-1)  # [N, D + P * W]


@functools.partial(jax.jit, static_argnames=("module",))
def _encode_text(module: Backbone, params: Any, ids: jax.Array) -> jax.Array:
    return module.apply({"params": params}, ids, method="encode_text")


def batch_bucket(n: int, max_batch: int) -> int:
    """Smallest power of two >= n (at least `MIN_BATCH_BUCKET`), capped at `max_batch`."""
    return min(max_batch, max(MIN_BATCH_BUCKET, 1 << max(0, n - 1).bit_length()))


def trimmed_length(ids: np.ndarray, eot_token_id: int) -> int:
    """Positions needed to reach every row's first EOT, rounded up to `TEXT_LENGTH_BUCKET`."""
    last = int(np.max(first_eot(ids, eot_token_id))) + 1 if len(ids) else 1
    return min(ids.shape[1], -(-last // TEXT_LENGTH_BUCKET) * TEXT_LENGTH_BUCKET)


def run_bucketed(fn: Callable[[np.ndarray], jax.Array], rows: np.ndarray, max_batch: int) -> np.ndarray:
    """Applies `fn` to `rows` in chunks padded to power-of-two buckets; returns numpy float32."""
    if len(rows) == 0:
        raise ValueError("nothing to encode: the batch is empty")
    return padded_batches(fn, rows, max_batch, pad_to=lambda n: batch_bucket(n, max_batch)).astype(np.float32)


@dataclasses.dataclass
class FrozenCLIP:
    """A frozen CLIP or SigLIP: parameters, geometry, tokenizer and preprocessing.

    Attributes:
      params: Flax parameter tree (float32), passed to every jitted call.
      config: geometry read from the checkpoint's config.json.
      tokenizer: the checkpoint's tokenizer (CLIP: original OpenAI BPE rules; SigLIP: its own).
      transform: the eval preprocessing from preprocessor_config.json.
      dtype: compute dtype of the towers (float32 default; bfloat16 for TPU/GPU).
      source: the checkpoint directory it was loaded from.
      weights_file: the weights file read (fingerprinted by the feature stores).
      max_batch: largest chunk per jitted call.
    """

    params: Any
    config: CLIPConfig
    tokenizer: Tokenizer
    transform: ImageTransform
    dtype: Any = jnp.float32
    source: str = ""
    weights_file: str = ""
    max_batch: int = 256

    @property
    def module(self) -> Backbone:
        # remat only changes what a backward pass keeps: inference is unaffected, and
        # training through the cached "suffix" path stays within memory (the
        # whole-sequence path bounds its memory by class chunks instead: heads.TokenHead).
        return backbone(self.config, dtype=self.dtype, remat_text=True)

    @property
    def logit_scale(self) -> float:
        """exp of the stored log logit scale."""
        return float(np.exp(np.asarray(self.params["logit_scale"])))

    @property
    def logit_bias(self) -> float:
        """SigLIP's learned logit bias (0 for CLIP, which has none)."""
        return float(np.asarray(self.params["logit_bias"])) if "logit_bias" in self.params else 0.0

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> np.int32 [N, context_length] ids (SOT ... EOT, 0-padded, truncated keeping EOT)."""
        return self.tokenizer(texts)

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """PIL images / uint8 arrays / paths -> np.float32 [N, R, R, 3]."""
        return eval_transform(images, self.transform)

    def encode_image(self, pixels: np.ndarray | jax.Array) -> np.ndarray:
        """Preprocessed pixels [N, R, R, 3] -> projected image features [N, D] (not normalised)."""
        pixels = self._check_pixels(pixels)
        module = self.module
        return run_bucketed(lambda x: _encode_image(module, self.params, x), pixels, self.max_batch)

    def _check_pixels(self, pixels: np.ndarray | jax.Array) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        r = self.config.vision.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (r, r, self.config.vision.num_channels):
            raise ValueError(f"encode_image expects pixels [N, {r}, {r}, 3], got shape {pixels.shape}")
        return pixels

    def encode_image_grid(self, pixels: np.ndarray | jax.Array) -> np.ndarray:
        """Preprocessed pixels [N, R, R, 3] -> [N, D + P * W]: the projected feature, then the last block's
        P patch tokens (width W), flattened into one row so they are cached and batched like features
        (`unpack_grid` splits them)."""
        pixels = self._check_pixels(pixels)
        module = self.module
        return run_bucketed(lambda x: _encode_image_grid(module, self.params, x), pixels, self.max_batch)

    def unpack_grid(self, rows: np.ndarray | jax.Array) -> tuple[Any, Any]:
        """Rows [..., D + P * W] of `encode_image_grid` -> (features [..., D], patch tokens [..., P, W])."""
        d, w = self.config.projection_dim, self.config.vision.hidden_size
        return rows[..., :d], rows[..., d:].reshape(*rows.shape[:-1], self.config.vision.num_patches, w)

    def encode_text(self, ids: np.ndarray | jax.Array) -> np.ndarray:
        """Token ids [N, L] (L <= context length) -> projected text features [N, D] (not normalised)."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] > self.config.text.context_length:
            raise ValueError(
                f"encode_text expects ids [N, <= {self.config.text.context_length}], got shape {ids.shape}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.text.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.text.vocab_size}), got {ids.min()}..{ids.max()}")
        if self.config.text.causal:
            ids = ids[:, : trimmed_length(ids, self.config.text.eot_token_id)]
        elif ids.shape[1] != self.config.text.context_length:
            raise ValueError(
                f"SigLIP text must be padded to its full context of {self.config.text.context_length} (its tower "
                f"is pooled at the last position), got ids of length {ids.shape[1]}; use tokenize()"
            )
        ids = ids.astype(np.int32)
        module = self.module
        return run_bucketed(lambda x: _encode_text(module, self.params, x), ids, self.max_batch)
