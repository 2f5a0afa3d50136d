"""The trainable AAPE learner: aggregator A, generator h and the task head."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from aape_jax.models.aggregator import AGGREGATORS, AttentionAggregator, MLPAggregator
from aape_jax.models.generator import PromptGenerator
from aape_jax.models.heads import TOKEN_POSITIONS, FeatureHead, TokenHead, l2_normalize

COMBINE_MODES = ("token", "feature")


@dataclasses.dataclass(frozen=True)
class AAPEConfig:
    """Geometry and variants of the learner (mirrors the experiment config's `model` block).

    Attributes:
      embed_dim: D, CLIP's joint-space width.
      token_width: W, CLIP's token-embedding width (token mode).
      combine: "token" or "feature".
      aggregator: "attention", "mean", "random" or "mlp".
      num_heads: attention heads of the attention aggregator.
      aggregator_hidden: hidden width of the MLP aggregator.
      generator_hidden: bottleneck width of the generator.
      num_tokens: AAPE tokens inserted per image (token mode).
      token_position: where they go (token mode): "prefix" (after [SOS]; the
        default, see experiments/common.py) or "suffix" (before [EOT], class
        prefixes computed once and cached, about 10x faster); see
        `models/heads.py`. Carried to the step by `ClassText.token_position`.
    """

    embed_dim: int
    token_width: int
    combine: str = "token"
    aggregator: str = "attention"
    num_heads: int = 8
    aggregator_hidden: int = 512
    generator_hidden: int = 32
    num_tokens: int = 1
    token_position: str = "prefix"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"model.combine is {self.combine!r}; choose one of {COMBINE_MODES}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"model.aggregator is {self.aggregator!r}; choose one of {tuple(AGGREGATORS)}")
        if self.token_position not in TOKEN_POSITIONS:
            raise ValueError(f"model.token_position is {self.token_position!r}; choose one of {TOKEN_POSITIONS}")
        for name in ("num_heads", "aggregator_hidden", "generator_hidden", "num_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.aggregator == "attention" and self.embed_dim % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} does not divide the embedding width {self.embed_dim}")


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
        if c.combine == "feature":
            self.head = FeatureHead(c.embed_dim)
        else:
            self.head = TokenHead(c.num_tokens, c.token_width)

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
