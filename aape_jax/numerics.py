"""Numerics every layer shares: unit-normalising rows, the base-to-new summaries, padded batched calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Rows shorter than this are scaled as if they had this norm (an all-zero row stays zero, not NaN).
NORM_EPS = 1e-6


def l2_normalize(x: Any, axis: int = -1) -> Any:
    """`x` scaled to unit L2 norm along `axis`, the norm clamped at `NORM_EPS`.

    NumPy in, NumPy out (host-side features, dividing by the norm); anything
    else goes through JAX (`x * rsqrt(max(|x|^2, eps^2))`, one fused op in a step).
    """
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), NORM_EPS)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), NORM_EPS**2))


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·B·N / (B + N), the base-to-new summary; 0 when both are 0."""
    if base < 0 or new < 0:
        raise ValueError(f"accuracies must be >= 0, got base={base}, new={new}")
    if base + new == 0:
        return 0.0
    return 2.0 * base * new / (base + new)


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, population std, ddof=0) over runs, e.g. the 3 seeds of a table cell.

    ddof=0 because the seeds are the whole set being summarised (and it stays
    defined for a single run, giving 0); CoOp's ``parse_test_res.py`` computes
    ``np.std`` with the same default.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std of no values is undefined")
    return float(v.mean()), float(v.std(ddof=0))


def padded_batches(fn: Callable[[np.ndarray], Any], rows: np.ndarray, batch_size: int,
                   pad_to: Callable[[int], int] | None = None) -> np.ndarray:
    """`fn` over `rows` in chunks of `batch_size`, each padded (last row repeated) to one shape; NumPy out.

    `pad_to(n)` gives the padded size of a chunk of n rows (default: always
    `batch_size`, so one compilation serves every chunk). Padded rows' outputs
    are dropped.
    """
    if len(rows) == 0:
        raise ValueError("nothing to compute: no rows given")
    outputs = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        size = pad_to(len(chunk)) if pad_to is not None else batch_size
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        outputs.append(np.asarray(fn(padded))[: len(chunk)])
    return np.concatenate(outputs)
