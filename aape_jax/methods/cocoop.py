"""CoCoOp: CoOp's context plus a meta-net shift per image (Zhou et al., CVPR 2022)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.methods.coop import context_init, context_learner
from aape_jax.methods.learner import Learner
from aape_jax.models.prompt_learners import ConditionalContextPrompt
from aape_jax.numerics import l2_normalize

SUMMARY = "CoOp context + a meta-net shift per image (Zhou et al., CVPR 2022)"


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    init = context_init(config, clip)
    d = clip.config.projection_dim
    prompt = ConditionalContextPrompt(init, max(1, d // config.baseline.meta_ratio))
    return context_learner("cocoop", config, clip, store, base_names,
                           tokens=lambda params, z: prompt.apply({"params": params}, l2_normalize(z)),  # [B, T, W]
                           init_params=lambda key: prompt.init(key, jnp.zeros((1, d)))["params"],
                           num_tokens=len(init))
