"""CuPL: CLIP with each class's LLM descriptions averaged into its class weight; nothing trained."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import prompt_table
from aape_jax.methods.learner import Learner, fixed_weights_logits

SUMMARY = "CLIP with each class's LLM descriptions averaged (CuPL, Pratt et al., ICCV 2023)"


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    def descriptions(names: Sequence[str]) -> jax.Array:
        table, mask = prompt_table(clip, store, prompts_of(names), list(names))  # [C, M, D]
        return jnp.asarray((table * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))

    return Learner(name="cupl", class_text=descriptions, logits_fn=fixed_weights_logits)
