"""KgCoOp: CoOp plus `||w_c - w_c^clip||^2` towards the hand-crafted prompt's weights (Yao et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.model import CLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.methods.coop import ContextTokens, shared_context_learner
from aape_jax.methods.learner import BaselineData, Learner
from aape_jax.models.heads import TokenHead
from aape_jax.numerics import l2_normalize

SUMMARY = "CoOp + ||w_c - w_c^clip||^2 towards the hand-crafted prompt (Yao et al., CVPR 2023)"


def knowledge_term(weight: float) -> Callable[[TokenHead, ContextTokens, CLIP], Callable]:
    """KgCoOp's term: the learned class weights' squared distance to the hand-crafted prompt's, times `weight`."""

    def regulariser(head: TokenHead, tokens: ContextTokens, clip_module: CLIP) -> Callable:
        def term(params, data: BaselineData):
            w = head.class_weights(tokens(params, None), data.class_text, clip_module, data.clip_params)[0]
            kg = jnp.mean(jnp.sum((w - l2_normalize(data.class_text.features)) ** 2, -1))
            return weight * kg, {"kg": kg}

        return term

    return regulariser


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    weight = config.baseline.kg_weight
    return shared_context_learner("kgcoop", config, clip, store, base_names,
                                  regulariser=knowledge_term(weight) if weight else None)
