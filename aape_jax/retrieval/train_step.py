"""AAPE for image-text retrieval: the learner, its pure train step and the embedding function (no I/O).

Per training image x with captions C(x) (precomputed, normalised CLIP text
embeddings, a padded table row):
  q = n(f(x))                             the frozen image feature
  p = n(A(q, C(x)))                       the aggregator's summary of x's captions (training only)
  a = h(q)                                the AAPE, from the image alone
  e = n(q + gamma * n(a))                 the retrieval embedding of x (`score`, below)
Texts keep their plain CLIP embeddings n(g(c)); the score of (x, c) is e . n(g(c)).

Loss = task + lambda * L_distill + w_agg * L_agg, with
  task      symmetric InfoNCE at CLIP's temperature between e(x) and ONE caption of x,
            drawn per example from `fold_in(fold_in(step_key, index), 1)` (sharding-invariant);
  L_distill ||n(a) - sg(p)||^2 (aape_jax.losses.distill_loss);
  L_agg     symmetric InfoNCE between p and q (the CLIP reward, aape_jax.losses.clip_reward_loss).

`score` (our choice; the paper does not say how AAPE enters its retrieval score):
  "sum":  gamma = `alpha`, fixed;
  "gate": gamma is a learned scalar initialised at `alpha`.
With gamma = 0 the score is zero-shot CLIP. No classification head is built:
the learner holds only the aggregator, the generator (and the gate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from aape_jax import losses
from aape_jax.models.aape import AAPE, AAPEConfig
from aape_jax.numerics import l2_normalize
from aape_jax.train_step import LossWeights, batch_prompts
from aape_jax.trainer import Batch  # prompt_rows [B] is the image index here

SCORES = ("sum", "gate")


@flax.struct.dataclass
class RetrievalData:
    """Inputs shared by every step, replicated.

    Attributes:
      prompts: normalised caption embeddings [R, M, D], one row per training image.
      prompt_mask: valid captions [R, M].
      logit_scale: CLIP's stored log logit scale.
    """

    prompts: jax.Array
    prompt_mask: jax.Array
    logit_scale: jax.Array


class RetrievalAAPE(nn.Module):
    """AAPE's aggregator and generator, plus the image-side combination for retrieval.

    Attributes:
      config: the AAPE geometry, without a head (`head=None`: retrieval scores the image side only).
      score: "sum" (fixed gamma = alpha) or "gate" (learned gamma, initialised at alpha).
      alpha: weight of n(a) added to q.
    """

    config: AAPEConfig
    score: str = "gate"
    alpha: float = 0.5

    def setup(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"model.score is {self.score!r}; choose one of {SCORES}")
        self.aape = AAPE(self.config)
        if self.score == "gate":
            self.gate = self.param("gate", nn.initializers.constant(self.alpha), ())

    def gamma(self) -> jax.Array:
        return self.gate if self.score == "gate" else jnp.asarray(self.alpha, jnp.float32)

    def summarize(self, q: jax.Array, prompts: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """q [B, D], captions [B, M, D], mask [B, M] -> normalised summary [B, D]."""
        return self.aape.summarize(q, prompts, mask, rng)

    def generate(self, q: jax.Array) -> jax.Array:
        """q [B, D] -> AAPE a(x) [B, D] (unnormalised)."""
        return self.aape.generate(q)

    def embed(self, q: jax.Array, aape: jax.Array) -> jax.Array:
        """q [B, D], a [B, D] -> retrieval embedding n(q + gamma n(a)) [B, D]."""
        return l2_normalize(q + self.gamma() * l2_normalize(aape))

    def __call__(self, q: jax.Array, prompts: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        a = self.generate(q)
        return self.summarize(q, prompts, mask), self.embed(q, a)


def _pick_captions(prompts: jax.Array, mask: jax.Array, keys: jax.Array) -> jax.Array:
    """One valid caption per example, uniformly: [B, M, D], [B, M], keys [B] -> [B, D]."""
    logits = jnp.where(mask, 0.0, -jnp.inf)  # [B, M]
    pick = jax.vmap(lambda k, l: jax.random.categorical(jax.random.fold_in(k, 1), l))(keys, logits)  # [B]
    return jnp.take_along_axis(prompts, pick[:, None, None], axis=1)[:, 0]


def make_loss_fn(model: RetrievalAAPE, weights: LossWeights, axis_name: str | None = None) -> Callable:
    """Returns `loss_fn(params, batch, data, key) -> (loss, parts)` (`aape_jax.trainer` makes the step).

    With `axis_name` (pmap) both contrastive terms run over the global batch
    gathered across devices, as in `aape_jax.train_step.make_loss_fn`, so pmap
    and jit optimise the same objective; the caller `pmean`s the gradients.
    """

    def loss_fn(params: Any, batch: Batch, data: RetrievalData, key: jax.Array) -> tuple[jax.Array, dict]:
        variables = {"params": params}
        q, prompts, mask, keys = batch_prompts(batch, data, key)
        summary = model.apply(variables, q, prompts, mask, keys, method=RetrievalAAPE.summarize)  # [B, D]
        aape = model.apply(variables, q, method=RetrievalAAPE.generate)  # [B, D]
        e = model.apply(variables, q, aape, method=RetrievalAAPE.embed)  # [B, D]
        caption = _pick_captions(prompts, mask, keys)  # [B, D]
        distill = losses.distill_loss(aape, summary)
        all_e, all_c, all_summary, all_q = e, caption, summary, q
        if axis_name is not None:
            gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # [B_global, D]
            all_e, all_c, all_summary, all_q = gather(e), gather(caption), gather(summary), gather(q)
        task = losses.clip_reward_loss(all_e, all_c, data.logit_scale)
        agg = losses.clip_reward_loss(all_summary, all_q, data.logit_scale)
        total = task + weights.distill * distill + weights.aggregator * agg
        sims = all_e @ all_c.T  # [B_global, B_global]
        accuracy = jnp.mean(jnp.argmax(sims, -1) == jnp.arange(sims.shape[0]))
        gamma = model.apply(variables, method=RetrievalAAPE.gamma)
        return total, {"loss": total, "task": task, "distill": distill, "agg": agg, "batch_i2t_acc": accuracy,
                       "gamma": gamma}

    return loss_fn


def make_embed_fn(model: RetrievalAAPE) -> Callable[[Any, jax.Array], jax.Array]:
    """Returns the pure inference `embed(params, image_features [B, D]) -> e [B, D]` (generator only)."""

    def embed(params: Any, image_features: jax.Array) -> jax.Array:
        variables = {"params": params}
        q = l2_normalize(image_features)
        a = model.apply(variables, q, method=RetrievalAAPE.generate)
        return model.apply(variables, q, a, method=RetrievalAAPE.embed)

    return embed
