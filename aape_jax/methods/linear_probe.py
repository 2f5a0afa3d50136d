"""Linear probe: logistic regression on residuals of the zero-shot text weights of the training classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import template_features
from aape_jax.methods.learner import BaselineData, Learner, cross_entropy_loss, scaled_cosine
from aape_jax.models.prompt_learners import ResidualLinearProbe

SUMMARY = "logistic regression on residuals of the zero-shot text weights (new classes keep zero-shot's)"


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    row_of = {n: i for i, n in enumerate(base_names)}
    probe = ResidualLinearProbe(len(base_names), clip.config.projection_dim)

    def probe_text(names: Sequence[str]):
        rows = np.array([row_of.get(n, -1) for n in names], np.int32)
        return template_features(clip, store, config.model.template, names), rows

    def probe_logits(params, image_features, class_text, clip_params, logit_scale):
        text, rows = class_text
        delta = probe.apply({"params": params})  # [C_train, D]
        weights = jnp.asarray(text) + jnp.where((rows >= 0)[:, None], delta[jnp.maximum(rows, 0)], 0.0)
        return scaled_cosine(image_features, weights, logit_scale)

    data = BaselineData(class_text=probe_text(base_names), clip_params=None,
                        logit_scale=jnp.asarray(clip.params["logit_scale"]))
    return Learner(name="linear_probe", class_text=probe_text, logits_fn=probe_logits,
                   init_params=lambda key: probe.init(key)["params"], make_loss=cross_entropy_loss(probe_logits),
                   step_data=data)
