"""Few-shot base-to-new protocol: splits, sampling, cache, metrics."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest

from aape_jax import numerics
from aape_jax.data import protocol
from aape_jax.data.types import Example


def _pool(counts: dict[int, int]) -> list[Example]:
    """Examples with the given per-label counts, labels interleaved (not sorted)."""
    out = []
    remaining = dict(counts)
    i = 0
    while any(remaining.values()):
        for label in sorted(remaining, reverse=True):
            if remaining[label]:
                out.append(Example(image=f"img{i}.jpg", label=label, key=f"k/{label}/{i:04d}"))
                remaining[label] -= 1
                i += 1
    return out


@pytest.mark.parametrize("n", range(0, 13))
def test_base_new_split(n):
    base, new = protocol.base_new_split(n)
    assert set(base).isdisjoint(new)
    assert base + new == list(range(n))
    assert len(base) == math.ceil(n / 2)
    assert len(base) - len(new) in (0, 1)


def test_base_new_split_known_sizes():
    assert protocol.base_new_split(101) == (list(range(51)), list(range(51, 101)))
    assert protocol.base_new_split(1) == ([0], [])
    assert protocol.base_new_split(5) == ([0, 1, 2], [3, 4])


def test_subsample_relabels_in_order_of_classes():
    pool = _pool({0: 2, 1: 2, 2: 2, 3: 2, 4: 2})
    _, new = protocol.base_new_split(5)  # [3, 4]
    sub = protocol.subsample(pool, new)
    assert len(sub) == 4
    by_key = {e.key: e for e in pool}
    for e in sub:
        orig = by_key[e.key]
        assert orig.label in new and e.label == new.index(orig.label)
        assert e.image == orig.image
    # Input order kept.
    assert [e.key for e in sub] == [e.key for e in pool if e.label in new]
    # Non-contiguous, reordered class list: labels follow the list's order.
    sub = protocol.subsample(pool, [4, 1])
    assert {by_key[e.key].label: e.label for e in sub} == {4: 0, 1: 1}
    with pytest.raises(ValueError):
        protocol.subsample(pool, [1, 1])


def test_few_shot_counts_order_and_no_duplicates():
    pool = _pool({0: 10, 1: 7, 2: 20})
    shot = protocol.few_shot(pool, shots=4, seed=1)
    assert [e.label for e in shot] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({e.key for e in shot}) == 12
    assert all(e in pool for e in shot)


def test_few_shot_matches_documented_draw():
    pool = _pool({0: 10, 1: 7})
    rng = np.random.default_rng(5)
    expected = []
    for label in (0, 1):
        items = [e for e in pool if e.label == label]
        expected += [items[i] for i in rng.choice(len(items), 3, replace=False)]
    assert protocol.few_shot(pool, 3, seed=5) == expected


def test_few_shot_deterministic_and_seeds_differ():
    pool = _pool({0: 30, 1: 30, 2: 30})
    a = protocol.few_shot(pool, 5, seed=1)
    assert protocol.few_shot(pool, 5, seed=1) == a
    assert protocol.few_shot(pool, 5, seed=2) != a
    assert protocol.few_shot(pool, 5, seed=3) != protocol.few_shot(pool, 5, seed=2)


def test_few_shot_all_when_not_positive():
    pool = _pool({0: 3, 1: 2})
    assert protocol.few_shot(pool, -1, seed=0) == pool
    assert protocol.few_shot(pool, 0, seed=0) == pool


def test_few_shot_fewer_images_than_shots():
    pool = _pool({0: 10, 1: 2, 2: 10})
    # Default (Dassl / CoOp): the short class keeps all its images, once each.
    shot = protocol.few_shot(pool, 4, seed=0)
    counts = Counter(e.label for e in shot)
    assert counts == {0: 4, 1: 2, 2: 4}
    assert [e for e in shot if e.label == 1] == [e for e in pool if e.label == 1]
    # The short class consumes no randomness: class 2's sample is the same as
    # when class 1 is absent altogether.
    without_1 = protocol.few_shot([e for e in pool if e.label != 1], 4, seed=0)
    assert [e for e in shot if e.label == 2] == [e for e in without_1 if e.label == 2]
    # repeat=True: with replacement, exactly `shots` per class.
    rep = protocol.few_shot(pool, 5, seed=0, repeat=True)
    counts = Counter(e.label for e in rep)
    assert counts == {0: 5, 1: 5, 2: 5}
    ones = [e.key for e in rep if e.label == 1]
    assert set(ones) <= {e.key for e in pool if e.label == 1} and len(set(ones)) <= 2


def test_few_shot_cached_round_trip(tmp_path):
    pool = _pool({0: 8, 1: 8, 2: 8})
    cache = tmp_path / "split_fewshot" / "shot_2-seed_1.json"
    first = protocol.few_shot_cached(pool, 2, 1, cache)
    assert first == protocol.few_shot(pool, 2, 1)
    payload = json.loads(cache.read_text())
    assert payload == {"train": [[e.key, e.label] for e in first]}
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp files left
    # Reused: the file wins even if the pool order (hence a fresh draw) changes.
    again = protocol.few_shot_cached(list(reversed(pool)), 2, 1, cache)
    assert again == first
    mtime = os.stat(cache).st_mtime_ns
    protocol.few_shot_cached(pool, 2, 1, cache)
    assert os.stat(cache).st_mtime_ns == mtime


def test_few_shot_cached_unknown_keys(tmp_path):
    pool = _pool({0: 4, 1: 4})
    cache = tmp_path / "c.json"
    cache.write_text(json.dumps({"train": [[pool[0].key, pool[0].label], ["nope/1", 0], ["nope/2", 1]]}))
    with pytest.raises(ValueError) as err:
        protocol.few_shot_cached(pool, 1, 0, cache)
    msg = str(err.value)
    assert str(cache) in msg and "nope/1" in msg and "nope/2" in msg


def test_few_shot_cached_malformed_or_mislabelled(tmp_path):
    pool = _pool({0: 4, 1: 4})
    cache = tmp_path / "c.json"
    cache.write_text("{not json")  # a damaged draw is rebuilt: the same draw, it depends only on the seed
    assert protocol.few_shot_cached(pool, 1, 0, cache) == protocol.few_shot(pool, 1, 0)
    cache.write_text(json.dumps({"train": [[pool[0].key, 1 - pool[0].label]]}))
    with pytest.raises(ValueError, match="disagree"):
        protocol.few_shot_cached(pool, 1, 0, cache)


def test_accuracy_and_per_class():
    pred = [0, 1, 1, 2, 2, 2]
    labels = [0, 1, 2, 2, 2, 0]
    assert protocol.accuracy(pred, labels) == pytest.approx(400 / 6)
    assert protocol.accuracy(np.array([1, 1]), np.array([1, 1])) == 100.0
    assert protocol.accuracy([0], [1]) == 0.0
    pc = protocol.per_class_accuracy(pred, labels, num_classes=4)
    np.testing.assert_allclose(pc[:3], [50.0, 100.0, 200 / 3])
    assert np.isnan(pc[3])
    with pytest.raises(ValueError):
        protocol.accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        protocol.accuracy([], [])


def test_harmonic_mean_and_mean_std():
    assert numerics.harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert numerics.harmonic_mean(50.0, 50.0) == 50.0
    assert numerics.harmonic_mean(0.0, 0.0) == 0.0
    assert numerics.harmonic_mean(100.0, 0.0) == 0.0
    # CoCoOp's published average row: 80.47 / 71.69 -> 75.83.
    assert numerics.harmonic_mean(80.47, 71.69) == pytest.approx(75.83, abs=0.005)
    m, s = numerics.mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(math.sqrt(2 / 3))
    assert numerics.mean_std([5.0]) == (5.0, 0.0)
