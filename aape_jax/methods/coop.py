"""CoOp: a learned context shared by all classes, `[SOS] ctx {class}. [EOT]` (Zhou et al., IJCV 2022).

`context_learner` is the family's common part, also used by CoCoOp and KgCoOp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import class_text
from aape_jax.methods.learner import BaselineData, Learner, cross_entropy_loss
from aape_jax.models.heads import TEXT_MEMORY_GB, TokenHead, class_logits
from aape_jax.models.prompt_learners import ContextPrompt

SUMMARY = "learned context, `[SOS] ctx {class}. [EOT]` (Zhou et al., IJCV 2022)"

# tokens(params, image_features [B, D] or None) -> context tokens [B or 1, T, W]
ContextTokens = Callable[[Any, jax.Array | None], jax.Array]


def context_init(config: ml_collections.ConfigDict, clip: FrozenCLIP) -> np.ndarray:
    """The token embeddings of `baseline.ctx_init` ("a photo of a"): the context's start [T, W]."""
    n_ctx = len(clip.tokenizer.encode(config.baseline.ctx_init))
    ids = clip.tokenize([config.baseline.ctx_init])
    embeds = np.asarray(clip.module.apply({"params": clip.params}, ids, method="embed_tokens"))
    start = clip.tokenizer.text_start
    return embeds[0, start:start + n_ctx]


def context_learner(name: str, config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore,
                    base_names: Sequence[str], tokens: ContextTokens, init_params: Callable[[jax.Array], Any],
                    num_tokens: int, regulariser: Callable | None = None) -> Learner:
    """A learner whose context tokens go after [SOS] of `"{class}."`, trained with cross-entropy.

    `regulariser(head, tokens, clip_module)` -> `(params, data) -> (weighted term, {name: term})`, or None.
    """
    head = TokenHead(num_tokens, clip.config.text.hidden_size, "prefix",
                     config.model.get("text_memory_gb", TEXT_MEMORY_GB))
    text = lambda names: class_text(clip, config.model.template, names, num_tokens, store, token_prompt="{}.")

    def prompt_logits(params, image_features, class_text, clip_params, logit_scale):
        w = head.class_weights(tokens(params, image_features), class_text, clip.module, clip_params)
        w = jnp.broadcast_to(w, (image_features.shape[0], *w.shape[1:]))  # [B, C, D]
        return class_logits(image_features, w, logit_scale)

    data = BaselineData(class_text=text(base_names), clip_params=clip.params,
                        logit_scale=jnp.asarray(clip.params["logit_scale"]))
    make_loss = cross_entropy_loss(prompt_logits, regulariser(head, tokens, clip.module) if regulariser else None)
    return Learner(name=name, class_text=text, logits_fn=prompt_logits, uses_clip_text=True,
                   init_params=init_params, make_loss=make_loss, step_data=data)


def shared_context_learner(name: str, config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore,
                           base_names: Sequence[str], regulariser: Callable | None = None) -> Learner:
    """CoOp's learner: one context for every image and class (KgCoOp adds its `regulariser`)."""
    init = context_init(config, clip)
    prompt = ContextPrompt(init)
    return context_learner(name, config, clip, store, base_names,
                           tokens=lambda params, z: prompt.apply({"params": params}),  # [1, T, W]
                           init_params=lambda key: prompt.init(key)["params"], num_tokens=len(init),
                           regulariser=regulariser)


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    return shared_context_learner("coop", config, clip, store, base_names)
