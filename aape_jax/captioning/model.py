"""The trainable tree of captioning and VQA: LiMBeR's linear map, and AAPE with its own map.

LiMBeR (Merullo et al. 2023) maps frozen image features linearly into a frozen
language model's input embeddings and trains only that map. Two image inputs:
  "pooled": CLIP's projected feature f(x) [D] -> k soft tokens (one Dense D -> k * W);
  "grid":   the ViT's last-block patch tokens [P, Wv] -> P soft tokens (one Dense Wv -> W,
            shared by every patch, as LiMBeR maps each cell of its RN50x16 grid).
With AAPE (our reading; the paper does not publish how AAPE enters LiMBeR), the
AAPE of the image goes through a second Dense D -> m * W into m more soft tokens
after the image tokens. In training that AAPE is the aggregator's summary of the
image's other captions (leave-one-out); at test time the generator's a(x) from
the image alone (both unit-normalised), so no caption is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aape_jax.clip.config import CLIPConfig
from aape_jax.lm.config import LMConfig
from aape_jax.models.aape import AAPE, AAPEConfig, aape_config
from aape_jax.numerics import l2_normalize

IMAGE_INPUTS = ("pooled", "grid")
METHODS = ("aape", "limber")


@dataclasses.dataclass(frozen=True)
class MapConfig:
    """Geometry of the maps.

    Attributes:
      lm_width: W, the language model's embedding width.
      image_input: "pooled" or "grid" (see the module docstring).
      feature_dim: D, CLIP's joint-space width (the pooled feature, the AAPE).
      grid_width: Wv, the ViT's width (grid input).
      num_image_tokens: k, soft tokens of a pooled feature (grid: one per patch).
      aape: the AAPE learner (aggregator and generator), or None for LiMBeR alone.
      num_aape_tokens: m, soft tokens of the AAPE.
    """

    lm_width: int
    image_input: str = "pooled"
    feature_dim: int = 512
    grid_width: int = 768
    num_image_tokens: int = 1
    aape: AAPEConfig | None = None
    num_aape_tokens: int = 1

    def __post_init__(self) -> None:
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"model.image_input is {self.image_input!r}; choose one of {IMAGE_INPUTS}")
        if self.image_input == "pooled" and self.num_image_tokens < 1:
            raise ValueError(f"model.num_image_tokens must be >= 1 for pooled features, got {self.num_image_tokens}")


class CaptionMaps(nn.Module):
    """LiMBeR's image map, and (with `config.aape`) AAPE's aggregator, generator and AAPE map.

    Attributes:
      config: the maps' geometry.
    """

    config: MapConfig

    def setup(self) -> None:
        c = self.config
        width = c.lm_width * (c.num_image_tokens if c.image_input == "pooled" else 1)
        self.image_map = nn.Dense(width, name="image_map")
        if c.aape is not None:
            self.aape = AAPE(c.aape)
            self.aape_map = nn.Dense(c.lm_width * c.num_aape_tokens, name="aape_map")

    def image_tokens(self, features: jax.Array, grid: jax.Array | None) -> jax.Array:
        """Pooled features [B, D] (or patch tokens [B, P, Wv]) -> soft tokens [B, k or P, W]."""
        c = self.config
        if c.image_input == "grid":
            return self.image_map(grid)  # [B, P, W]
        return self.image_map(features).reshape(features.shape[0], c.num_image_tokens, c.lm_width)

    def summarize(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Normalised features [B, D], caption embeddings [B, M, D], mask [B, M] -> normalised summary [B, D]."""
        return self.aape.summarize(q, prompts, mask, rng)

    def generate(self, q: jax.Array) -> jax.Array:
        """Normalised features [B, D] -> AAPE a(x) [B, D] (unnormalised)."""
        return self.aape.generate(q)

    def aape_tokens(self, aape: jax.Array) -> jax.Array:
        """An AAPE [B, D] -> m soft tokens [B, m, W] (normalised first: summary and generator alike)."""
        c = self.config
        return self.aape_map(l2_normalize(aape)).reshape(aape.shape[0], c.num_aape_tokens, c.lm_width)

    def __call__(self, features: jax.Array, grid: jax.Array | None, prompts: jax.Array,
                 mask: jax.Array) -> jax.Array:
        """Touches every parameter (initialisation): the soft tokens of image and AAPE [B, k + m, W]."""
        tokens = self.image_tokens(features, grid)
        if self.config.aape is None:
            return tokens
        q = l2_normalize(features)
        self.summarize(q, prompts, mask)
        return jnp.concatenate([tokens, self.aape_tokens(self.generate(q))], axis=1)


def init_maps(model: CaptionMaps, key: jax.Array) -> dict:
    """A fresh trainable tree (shapes independent of the batch and the number of captions)."""
    c = model.config
    grid = jnp.zeros((1, 1, c.grid_width)) if c.image_input == "grid" else None
    return model.init(key, jnp.zeros((1, c.feature_dim)), grid, jnp.zeros((1, 1, c.feature_dim)),
                      jnp.ones((1, 1), bool))["params"]


def maps_config(model: Mapping[str, Any], method: str, clip_config: CLIPConfig, lm_config: LMConfig) -> MapConfig:
    """The maps of an experiment config's `model` block (a ConfigDict, or a run's config.json dict) for
    `method` ("aape" or "limber") between a CLIP and a decoder of these geometries."""
    if method not in METHODS:
        raise ValueError(f"config.method is {method!r}; choose one of {METHODS}")
    return MapConfig(
        lm_width=lm_config.hidden_size, image_input=model["image_input"], feature_dim=clip_config.projection_dim,
        grid_width=clip_config.vision.hidden_size, num_image_tokens=model["num_image_tokens"],
        aape=aape_config(model, clip_config) if method == "aape" else None,
        num_aape_tokens=model["num_aape_tokens"])
