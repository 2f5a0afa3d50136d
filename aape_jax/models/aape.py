"""The trainable AAPE learner: aggregator A, generator h and the task head."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aape_jax.clip.config import CLIPConfig
from aape_jax.models.aggregator import AGGREGATORS, AttentionAggregator, MLPAggregator
from aape_jax.models.generator import PromptGenerator
from aape_jax.models.heads import TEXT_MEMORY_GB, Head, make_head
from aape_jax.numerics import l2_normalize


@dataclasses.dataclass(frozen=True)
class AAPEConfig:
    """Geometry and variants of the learner (`aape_config` builds it from the experiment config's `model` block).

    Attributes:
      embed_dim: D, CLIP's joint-space width.
      head: the task head (`models/heads.py`); None for a learner without one (retrieval).
      aggregator: "attention", "mean", "random" or "mlp".
      num_heads: attention heads of the attention aggregator.
      aggregator_hidden: hidden width of the MLP aggregator.
      generator_hidden: bottleneck width of the generator.
    """

    embed_dim: int
    head: Head | None = None
    aggregator: str = "attention"
    num_heads: int = 8
    aggregator_hidden: int = 512
    generator_hidden: int = 32

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"model.aggregator is {self.aggregator!r}; choose one of {tuple(AGGREGATORS)}")
        for name in ("num_heads", "aggregator_hidden", "generator_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.aggregator == "attention" and self.embed_dim % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} does not divide the embedding width {self.embed_dim}")


def aape_config(model: Mapping[str, Any], clip_config: CLIPConfig) -> AAPEConfig:
    """The learner of an experiment config's `model` block (a ConfigDict, or the dict of a run's config.json)
    on a CLIP of `clip_config`'s geometry. A block with `combine` gets that head (`token_position` "prefix"
    when the block predates it); retrieval's has none."""
    head = None
    if "combine" in model:
        head = make_head(model["combine"], clip_config.projection_dim, clip_config.text.hidden_size,
                         model["num_tokens"], model.get("token_position", "prefix"),
                         model.get("text_memory_gb", TEXT_MEMORY_GB))
    return AAPEConfig(embed_dim=clip_config.projection_dim, head=head, aggregator=model["aggregator"],
                      num_heads=model["num_heads"], aggregator_hidden=model["aggregator_hidden"],
                      generator_hidden=model["generator_hidden"])


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """A fresh trainable tree of `model` (AAPE, or a module wrapping it with the same call); parameter
    shapes depend on neither the batch size nor the number of prompts M, so one of each is enough."""
    d = model.config.embed_dim
    return model.init(key, jnp.zeros((1, d)), jnp.zeros((1, 1, d)), jnp.ones((1, 1), bool))["params"]


class AAPE(nn.Module):
    """Aggregator (training only), generator and head, in one parameter tree.

    Attributes:
      config: the learner's geometry and variants.
    """

    config: AAPEConfig

    def setup(self) -> None:
        c = self.config
        if c.aggregator == "attention":
            self.aggregator = AttentionAggregator(c.num_heads)
        elif c.aggregator == "mlp":
            self.aggregator = MLPAggregator(c.aggregator_hidden)
        else:
            self.aggregator = AGGREGATORS[c.aggregator]()
        self.generator = PromptGenerator(c.generator_hidden, c.embed_dim)
        if c.head is not None:
            self.head = c.head.module()

    def summarize(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Normalised image feature [B, D], prompts [B, M, D], mask [B, M] -> normalised p_sum [B, D]."""
        return l2_normalize(self.aggregator(q, prompts, mask, rng))

    def generate(self, q: jax.Array) -> jax.Array:
        """Normalised image feature [B, D] -> AAPE a(x) [B, D] (unnormalised)."""
        return self.generator(q)

    def project(self, aape: jax.Array) -> jax.Array:
        """AAPE [B, D] -> the head's output: P a [B, D] (feature) or tokens [B, T, W] (token)."""
        return self.head(aape)

    def __call__(self, q: jax.Array, prompts: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        a = self.generate(q)
        return self.summarize(q, prompts, mask), self.project(a)
