"""Every method of the harness as a `Learner`: AAPE and the baselines, on the same features.

A learner says what it needs per class list (`class_text`), how it scores
image features against it (`logits_fn`, pure), and, when it trains, how to
initialise its trainable tree and its loss. The trainer, the evaluator and
the feature stores are shared, so every row of a results table is comparable.

`METHODS` maps config `method` to its module (each has `SUMMARY` and
`build(config, clip, store, base_names, prompts_of) -> Learner`), in the order
of the results table's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import ml_collections

from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore
from aape_jax.errors import ConfigError
from aape_jax.methods import aape, cocoop, coop, cupl, kgcoop, linear_probe, zeroshot_clip
from aape_jax.methods.learner import Learner

METHODS: dict[str, ModuleType] = {
    "zeroshot_clip": zeroshot_clip,
    "cupl": cupl,
    "linear_probe": linear_probe,
    "coop": coop,
    "cocoop": cocoop,
    "kgcoop": kgcoop,
    "aape": aape,
}


def build(config: ml_collections.ConfigDict, clip: FrozenCLIP, store: FeatureStore, base_names: Sequence[str],
          prompts_of: Callable[[Sequence[str]], list[list[str]]]) -> Learner:
    """The learner of `config.method`, set up for the training classes `base_names`.

    `prompts_of(names)` gives each class's natural-language prompts (AAPE, CuPL).
    """
    method = config.method
    if method not in METHODS:
        raise ConfigError(f"config.method is {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method].build(config, clip, store, base_names, prompts_of)


__all__ = ["METHODS", "Learner", "build"]
