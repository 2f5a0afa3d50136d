"""AAPE (this project): aggregator + generator + head, trained with CE + distillation + the CLIP reward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import class_text, prompt_table
from aape_jax.methods.learner import Learner
from aape_jax.models.aape import AAPE, aape_config, init_params
from aape_jax.models.heads import ClassText
from aape_jax.train_step import LossWeights, StepData, make_logits_fn, make_loss_fn

SUMMARY = "this project: an image-conditioned prompt distilled from natural-language prompts (models/aape.py)"


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    model = AAPE(aape_config(config.model, clip.config))
    head = model.config.head
    table, mask = prompt_table(clip, store, prompts_of(base_names), list(base_names))
    clip_params = clip.params if head.uses_text_tower else None
    text = lambda names: class_text(clip, config.model.template, names, head.num_tokens, store)

    cache = jax.jit(lambda ct, cp: head.class_cache(ct, clip.module, cp))

    def classes(names: Sequence[str]) -> tuple[ClassText, Any]:
        """The class list's text and the head's per-list cache (computed once per evaluation, not per batch)."""
        ct = text(names)
        return ct, cache(ct, clip_params)

    scores = make_logits_fn(model, clip.module)
    weights = LossWeights(config.loss.distill_weight, config.loss.aggregator_weight)
    return Learner(
        name="aape", class_text=classes,
        logits_fn=lambda params, z, c, cp, scale: scores(params, z, c[0], cp, scale, c[1]),
        uses_clip_text=head.uses_text_tower,
        init_params=lambda key: init_params(model, key),
        make_loss=lambda axis: make_loss_fn(model, clip.module, weights, axis),
        step_data=StepData(prompts=jnp.asarray(table), prompt_mask=jnp.asarray(mask), class_text=text(base_names),
                           clip_params=clip_params, logit_scale=jnp.asarray(clip.params["logit_scale"])),
    )
