"""Zero-shot CLIP: one template (`model.template`) or the 80-template ImageNet ensemble; nothing trained."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import template_features
from aape_jax.methods.learner import Learner, fixed_weights_logits
from aape_jax.prompts import IMAGENET_TEMPLATES

SUMMARY = "CLIP with one template or the 80-template ImageNet ensemble (baseline.templates)"


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    templates = IMAGENET_TEMPLATES if config.baseline.templates == "ensemble" else (config.model.template,)

    def ensemble(names: Sequence[str]) -> jax.Array:
        z = np.stack([template_features(clip, store, t, names) for t in templates])  # [T, C, D]
        return jnp.asarray(z.mean(0))

    return Learner(name="zeroshot_clip", class_text=ensemble, logits_fn=fixed_weights_logits)
