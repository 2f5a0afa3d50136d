"""Every method of the harness as a `Learner`: AAPE and the baselines, on the same features.

A learner says what it needs per class list (`class_text`), how it scores
image features against it (`logits_fn`, pure), and, when it trains, how to
initialise its trainable tree and its loss. The trainer, the evaluator and
the feature stores are shared, so every row of a results table is comparable.

Methods (config `method`):
  aape            this project (models/aape.py)
  zeroshot_clip   CLIP with one template or the 80-template ImageNet ensemble
  cupl            CLIP with each class's LLM descriptions averaged (CuPL)
  linear_probe    logistic regression on residuals of the zero-shot text weights
  coop            learned context, `[SOS] ctx {class}. [EOT]` (Zhou et al., IJCV 2022)
  cocoop          CoOp context + a meta-net shift per image (Zhou et al., CVPR 2022)
  kgcoop          CoOp + ||w_c - w_c^clip||^2 towards the hand-crafted prompt (Yao et al., CVPR 2023)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aape_jax import losses
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.model import CLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import encode_texts, prompt_table, template_features
from aape_jax.models.aape import AAPE, AAPEConfig
from aape_jax.models.heads import ClassText, class_logits, class_weights, l2_normalize, template_ids
from aape_jax.models.prompt_learners import ConditionalContextPrompt, ContextPrompt, ResidualLinearProbe
from aape_jax.prompts import IMAGENET_TEMPLATES
from aape_jax.train_step import LossWeights, StepData, make_logits_fn, make_loss_fn

METHODS = ("aape", "zeroshot_clip", "cupl", "linear_probe", "coop", "cocoop", "kgcoop")


@dataclasses.dataclass
class Learner:
    """One method in the harness.

    Attributes:
      name: the method.
      class_text: class names -> what `logits_fn` needs about them (host side, once per list).
      logits_fn: pure `(params, image_features [B, D], class_text, clip_params, logit_scale) -> [B, C]`.
      uses_clip_text: whether the text tower runs inside `logits_fn` / the loss (CLIP params are passed).
      init_params: key -> a fresh trainable tree; None when the method does not train.
      make_loss: pmap axis name or None -> `loss_fn(params, batch, data, key) -> (loss, parts)`.
      step_data: the pytree every train step receives as `data`.
    """

    name: str
    class_text: Callable[[Sequence[str]], Any]
    logits_fn: Callable
    uses_clip_text: bool = False
    init_params: Callable[[jax.Array], Any] | None = None
    make_loss: Callable[[str | None], Callable] | None = None
    step_data: Any = None


@flax.struct.dataclass
class BaselineData:
    """What a baseline's train step receives besides the batch.

    Attributes:
      class_text: the training classes' text (method specific).
      clip_params: the frozen CLIP (None when the text tower does not run).
      logit_scale: CLIP's stored log logit scale.
    """

    class_text: Any
    clip_params: Any
    logit_scale: jax.Array


def make_class_text(model: FrozenCLIP, store: FeatureStore | None, template: str, classnames: Sequence[str],
                    num_tokens: int, token_prompt: str | None = None, token_position: str = "prefix") -> ClassText:
    """Template features and the token ids that learned tokens are inserted into.

    `token_prompt` (default: `template`) is the text the learned tokens go
    into: AAPE inserts into the template itself, CoOp's family into "{}.".
    `token_position`: after [SOS] ("prefix") or before [EOT] ("suffix").
    """
    texts = [template.format(c) for c in classnames]
    features = template_features(model, store, template, classnames) if store else encode_texts(model, texts)
    token_texts = [(token_prompt or template).format(c) for c in classnames]
    ids, eot = template_ids(model.tokenizer, token_texts, num_tokens)
    return ClassText(features=jnp.asarray(features), ids=jnp.asarray(ids), eot=jnp.asarray(eot),
                     token_position=token_position)


def aape_config(config: ml_collections.ConfigDict, model: FrozenCLIP) -> AAPEConfig:
    m = config.model
    return AAPEConfig(
        embed_dim=model.config.projection_dim, token_width=model.config.text.hidden_size, combine=m.combine,
        aggregator=m.aggregator, num_heads=m.num_heads, aggregator_hidden=m.aggregator_hidden,
        generator_hidden=m.generator_hidden, num_tokens=m.num_tokens, token_position=m.token_position,
    )


def _scaled_cosine(image_features: jax.Array, weights: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """`exp(s) * cos(f, w_c)` for class weights shared by all images: [B, D], [C, D] -> [B, C]."""
    return jnp.exp(logit_scale) * l2_normalize(image_features) @ l2_normalize(weights).T


def _ensemble_logits(params, image_features, class_text, clip_params, logit_scale):
    return _scaled_cosine(image_features, class_text, logit_scale)


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    """The learner of `config.method`, set up for the training classes `base_names`.

    `prompts_of(names)` gives each class's natural-language prompts (AAPE, CuPL).
    """
    method = config.get("method", "aape")
    b = config.get("baseline", ml_collections.ConfigDict())
    scale = jnp.asarray(clip.params["logit_scale"])

    if method == "aape":
        cfg = aape_config(config, clip)
        model = AAPE(cfg)
        table, mask = prompt_table(clip, store, prompts_of(base_names), list(base_names))
        class_text = lambda names: make_class_text(clip, store, config.model.template, names, cfg.num_tokens,
                                                   token_position=cfg.token_position)
        weights = LossWeights(config.loss.distill_weight, config.loss.aggregator_weight)
        token = cfg.combine == "token"
        q0 = jnp.zeros((1, cfg.embed_dim))
        return Learner(
            name=method, class_text=class_text, logits_fn=make_logits_fn(model, clip.module), uses_clip_text=token,
            init_params=lambda key: model.init(key, q0, jnp.asarray(table[:1]), jnp.asarray(mask[:1]))["params"],
            make_loss=lambda axis: make_loss_fn(model, clip.module, weights, axis),
            step_data=StepData(prompts=jnp.asarray(table), prompt_mask=jnp.asarray(mask),
                               class_text=class_text(base_names), clip_params=clip.params if token else None,
                               logit_scale=scale),
        )

    if method == "zeroshot_clip":
        templates = IMAGENET_TEMPLATES if b.templates == "ensemble" else (config.model.template,)

        def ensemble(names: Sequence[str]) -> jax.Array:
            z = np.stack([template_features(clip, store, t, names) for t in templates])  # [T, C, D]
            return jnp.asarray(z.mean(0))

        return Learner(name=method, class_text=ensemble, logits_fn=_ensemble_logits)

    if method == "cupl":
        def descriptions(names: Sequence[str]) -> jax.Array:
            table, mask = prompt_table(clip, store, prompts_of(names), list(names))  # [C, M, D]
            return jnp.asarray((table * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))

        return Learner(name=method, class_text=descriptions, logits_fn=_ensemble_logits)

    if method == "linear_probe":
        row_of = {n: i for i, n in enumerate(base_names)}
        probe = ResidualLinearProbe(len(base_names), clip.config.projection_dim)

        def probe_text(names: Sequence[str]):
            rows = np.array([row_of.get(n, -1) for n in names], np.int32)
            return template_features(clip, store, config.model.template, names), rows

        def probe_logits(params, image_features, class_text, clip_params, logit_scale):
            text, rows = class_text
            delta = probe.apply({"params": params})  # [C_train, D]
            weights = jnp.asarray(text) + jnp.where((rows >= 0)[:, None], delta[jnp.maximum(rows, 0)], 0.0)
            return _scaled_cosine(image_features, weights, logit_scale)

        return _trained(method, probe_text, probe_logits, lambda key: probe.init(key)["params"], base_names,
                        scale, kg_weight=0.0)

    if method in ("coop", "kgcoop", "cocoop"):
        n_ctx = len(clip.tokenizer.encode(b.ctx_init))
        ids = clip.tokenize([b.ctx_init])
        init = np.asarray(clip.module.apply({"params": clip.params}, ids, method=CLIP.embed_tokens))[0, 1:1 + n_ctx]
        text = lambda names: make_class_text(clip, store, config.model.template, names, n_ctx, token_prompt="{}.")
        if method == "cocoop":
            prompt = ConditionalContextPrompt(init, max(1, clip.config.projection_dim // b.meta_ratio))
            init_params = lambda key: prompt.init(key, jnp.zeros((1, clip.config.projection_dim)))["params"]
            tokens = lambda params, z: prompt.apply({"params": params}, l2_normalize(z))  # [B, T, W]
        else:
            prompt = ContextPrompt(init)
            init_params = lambda key: prompt.init(key)["params"]
            tokens = lambda params, z: prompt.apply({"params": params})  # [1, T, W]

        def prompt_logits(params, image_features, class_text, clip_params, logit_scale):
            w = class_weights("token", tokens(params, image_features), class_text, clip.module, clip_params)
            w = jnp.broadcast_to(w, (image_features.shape[0], *w.shape[1:]))  # [B, C, D]
            return class_logits(image_features, w, logit_scale)

        return _trained(method, text, prompt_logits, init_params, base_names, scale, clip=clip,
                        kg_weight=b.kg_weight if method == "kgcoop" else 0.0, tokens=tokens)

    raise ValueError(f"config.method is {method!r}; choose one of {', '.join(METHODS)}")


def _trained(method: str, class_text: Callable, logits_fn: Callable, init_params: Callable,
             base_names: Sequence[str], scale: jax.Array, clip: FrozenCLIP | None = None, kg_weight: float = 0.0,
             tokens: Callable | None = None) -> Learner:
    """A baseline trained with cross-entropy on the training classes (+ KgCoOp's term)."""
    data = BaselineData(class_text=class_text(base_names), clip_params=clip.params if clip else None,
                        logit_scale=scale)

    def make_loss(axis_name: str | None) -> Callable:
        def loss_fn(params, batch, data: BaselineData, key):
            logits = logits_fn(params, batch["features"], data.class_text, data.clip_params, data.logit_scale)
            ce = losses.cross_entropy(logits, batch["labels"])
            parts = {"ce": ce, "batch_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}
            total = ce
            if kg_weight:
                # KgCoOp: keep the learned class weights near the hand-crafted prompt's.
                w = class_weights("token", tokens(params, None), data.class_text, clip.module, data.clip_params)[0]
                kg = jnp.mean(jnp.sum((w - l2_normalize(data.class_text.features)) ** 2, -1))
                parts["kg"] = kg
                total = total + kg_weight * kg
            parts["loss"] = total
            return total, parts

        return loss_fn

    return Learner(name=method, class_text=class_text, logits_fn=logits_fn, uses_clip_text=clip is not None,
                   init_params=init_params, make_loss=make_loss, step_data=data)
