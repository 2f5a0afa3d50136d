"""The few-shot base-to-new protocol of CoOp / CoCoOp, and its metrics.

* :func:`base_new_split` and :func:`subsample`: CoCoOp's ``subsample_classes``
  (classes in label order, first ``ceil(n / 2)`` are base, the rest new; kept
  examples are relabelled ``0..k-1``).
* :func:`few_shot` and :func:`few_shot_cached`: Dassl's
  ``generate_fewshot_dataset`` on an explicit numpy generator, and CoOp's
  practice of saving the chosen images so every method trains on the same shots.
* :func:`accuracy`, :func:`per_class_accuracy`: the numbers reported in
  base-to-new tables (their summaries, H and the mean ± std over seeds, are
  :mod:`aape_jax.numerics`' ``harmonic_mean`` and ``mean_std``).

The samples are not the ones CoOp's Python ``random`` draws (different RNG), so
published numbers match in distribution, not image for image; the cache file is
what makes runs of this project comparable with each other.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
from absl import logging
from etils import epath

from aape_jax import atomic, storage
from aape_jax.data.types import Example
from aape_jax.errors import UserError

__all__ = [
    "base_new_split",
    "subsample",
    "few_shot",
    "few_shot_cached",
    "accuracy",
    "per_class_accuracy",
]


# --------------------------------------------------------------------------- #
# Classes
# --------------------------------------------------------------------------- #
def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """(base, new) class indices: ``range(ceil(n/2))`` and ``range(ceil(n/2), n)``.

    CoCoOp rounds up, so with an odd count base gets the extra class
    (e.g. 101 Caltech classes -> 51 base, 50 new).
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def subsample(examples: Sequence[Example], classes: Sequence[int]) -> list[Example]:
    """Examples whose label is in `classes`, relabelled by position in `classes`.

    Label ``classes[j]`` becomes ``j`` (as CoCoOp's ``subsample_classes`` does),
    so a model evaluated on the new classes uses only new class names as
    candidates.  Input order is kept.
    """
    relabel = {int(c): j for j, c in enumerate(classes)}
    if len(relabel) != len(classes):
        raise ValueError(f"classes must be distinct, got {list(classes)}")
    return [
        Example(image=e.image, label=relabel[e.label], key=e.key)
        for e in examples
        if e.label in relabel
    ]


# --------------------------------------------------------------------------- #
# Few-shot sampling
# --------------------------------------------------------------------------- #
def few_shot(
    examples: Sequence[Example], shots: int, seed: int, *, repeat: bool = False
) -> list[Example]:
    """Up to `shots` examples per class, drawn without replacement.

    Args:
      examples: the pool (typically a dataset's train split).
      shots: examples per class; ``shots <= 0`` (CoOp uses -1) returns all
        examples unchanged (as a new list).
      seed: a fresh ``np.random.default_rng(seed)`` drives the whole call, so
        the same (examples, shots, seed) always give the same result.
      repeat: what to do with a class that has fewer than `shots` examples.
        False (the default, as in Dassl's ``generate_fewshot_dataset``, which
        CoOp/CoCoOp call without ``repeat``) keeps all of that class's
        examples, in input order; True draws `shots` of them *with*
        replacement (Dassl's ``repeat=True``), so every class has exactly
        `shots` examples, some duplicated.

    Returns:
      Classes in sorted label order; within a class, examples in draw order.
      Each class's draw is ``rng.choice(len(items), shots, replace=False)``
      over its items in input order, with one generator shared by the classes
      in sorted order (so a class's sample depends on the classes before it,
      as in Dassl).
    """
    if shots <= 0:
        return list(examples)
    by_label: dict[int, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    for label in sorted(by_label):
        items = by_label[label]
        if len(items) >= shots:
            idx = rng.choice(len(items), shots, replace=False)
        elif repeat:
            idx = rng.choice(len(items), shots, replace=True)
        else:
            # No draw at all, like Dassl: the generator's state for later
            # classes is unaffected by whether this class was short.
            idx = np.arange(len(items))
        out.extend(items[int(i)] for i in idx)
    return out


def few_shot_cached(
    examples: Sequence[Example],
    shots: int,
    seed: int,
    cache_path: str | os.PathLike,
    *,
    repeat: bool = False,
) -> list[Example]:
    """:func:`few_shot`, with the chosen examples saved to / reused from a file.

    The file is JSON ``{"train": [[key, label], ...]}`` (CoOp keeps its few-shot
    split per seed the same way, so all methods train on the same images).  If
    it exists, its entries are looked up by key in `examples` and returned in
    file order, even if `shots` / `seed` would now draw differently: the file
    is the source of truth.  Otherwise the sample is drawn and written
    atomically (:mod:`aape_jax.atomic`; `cache_path` may be a bucket's), so a
    crash or a concurrent run never leaves a half-written file.

    A damaged file (unreadable, not JSON, not of that shape, e.g. truncated) is
    logged and rebuilt like a damaged feature-store entry: the draw depends only
    on (examples, shots, seed), so the rebuilt file holds the same draw.

    Raises:
      ForeignCacheError (a ValueError): the file names keys that are not in
        `examples`, or labels that disagree with theirs (it belongs to other
        data; delete it to resample).
    """
    path = storage.path(cache_path)
    if path.exists():
        try:
            return _read_cache(path, examples)
        except _DamagedCache as e:
            logging.warning("few-shot draw %s is damaged (%s); drawing it again from seed %d", path, e, seed)
    chosen = few_shot(examples, shots, seed, repeat=repeat)
    atomic.write_json(path, {"train": [[e.key, int(e.label)] for e in chosen]})
    return chosen


class _DamagedCache(ValueError):
    """A few-shot cache file that cannot be parsed (rebuilt, not an error)."""


class ForeignCacheError(UserError, ValueError):
    """A few-shot cache file written for other data."""

    hint = "delete the file to draw the shots again (other runs that used it trained on the old draw)"


def _read_cache(path: epath.Path, examples: Sequence[Example]) -> list[Example]:
    try:
        pairs = [(str(k), int(y)) for k, y in json.loads(storage.read_text(path))["train"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _DamagedCache(
            f"not a few-shot cache file ({{\"train\": [[key, label], ...]}}): {type(e).__name__}: {e}"
        ) from e
    by_key = {e.key: e for e in examples}
    unknown = [k for k, _ in pairs if k not in by_key]
    if unknown:
        raise ForeignCacheError(
            f"{path}: {len(unknown)} cached keys are not in the given examples, first "
            f"{unknown[:5]}; the cache belongs to other data: delete it to resample"
        )
    mislabelled = [k for k, y in pairs if by_key[k].label != y]
    if mislabelled:
        raise ForeignCacheError(
            f"{path}: cached labels disagree with the examples' labels for keys "
            f"{mislabelled[:5]}; delete the cache to resample"
        )
    return [by_key[k] for k, _ in pairs]


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #
def _labels_pair(pred: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray):
    p, y = np.asarray(pred), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"pred and labels must be 1-D of equal length, got {p.shape}, {y.shape}")
    return p, y


def accuracy(pred: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Top-1 accuracy in percent (0-100); `pred` are class indices, not scores."""
    p, y = _labels_pair(pred, labels)
    if y.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(100.0 * np.mean(p == y))


def per_class_accuracy(
    pred: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """float64 [num_classes] accuracy in percent per true class; NaN where a class has no examples."""
    p, y = _labels_pair(pred, labels)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    total = np.bincount(y, minlength=num_classes).astype(np.float64)
    correct = np.bincount(y[p == y], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * correct / total

