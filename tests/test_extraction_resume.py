"""Issue 11, item 11: image-feature extraction survives a kill and resumes bit for bit; per-batch progress."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from aape_jax.clip.preprocess import ImageTransform
from aape_jax.data import feature_store as fs
from aape_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
TRANSFORM = ImageTransform.openai(32)
_W = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)


def encode(pixels: np.ndarray) -> np.ndarray:
    """[n, 32, 32, 3] -> [n, 16]: 4x4 mean-pool and a fixed projection."""
    pooled = pixels.reshape(len(pixels), 4, 8, 4, 8, 3).mean(axis=(2, 4)).reshape(len(pixels), 48)
    return pooled @ _W


@pytest.fixture(scope="module")
def examples():
    return synthetic.make_dataset(num_classes=4, train_per_class=5, test_per_class=0, image_size=40).train


KEY = {"model": "fake", "views": 3, "seed": 7}


def _compute(examples, enc, batch_size=4):
    return lambda rows: {"z": fs.extract_image_features(enc, examples, TRANSFORM, views=3, seed=7, augment=True,
                                                        batch_size=batch_size, rows=rows)}


def test_interrupted_extraction_resumes_bit_identical(tmp_path, examples, monkeypatch):
    monkeypatch.setattr(fs, "CHUNK_IMAGES", 4)  # one chunk per batch
    reference = fs.FeatureStore(tmp_path / "a").get_or_compute_sharded(
        "images", KEY, len(examples), _compute(examples, encode))["z"]
    assert reference.shape == (20, 3, 16)

    store = fs.FeatureStore(tmp_path / "b")
    calls = []

    def dies_after_5(pixels):
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the sixth batch
        calls.append(len(pixels))
        return encode(pixels)

    with pytest.raises(KeyboardInterrupt):
        store.get_or_compute_sharded("images", KEY, len(examples), _compute(examples, dies_after_5))
    partial = store.partial_dir("images", KEY)
    assert len(list(partial.glob("chunk.*.npz"))) == 5
    assert not store.path("images", KEY).exists()

    again = []
    z = store.get_or_compute_sharded("images", KEY, len(examples),
                                     _compute(examples, lambda p: again.append(len(p)) or encode(p)))["z"]
    assert sum(again) == 60 - 5 * 4  # only the rest was encoded
    assert z.tobytes() == reference.tobytes()
    assert not partial.exists()  # chunks removed once the entry is complete
    # Chunks of another batch grid are not reused (their batches would differ), even where aligned.
    monkeypatch.setattr(fs, "CHUNK_IMAGES", 8)  # chunks [0, 8), [8, 16): batch-8 boundaries too
    store2 = fs.FeatureStore(tmp_path / "c")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        store2.get_or_compute_sharded("images", KEY, len(examples), _compute(examples, dies_after_5))
    assert len(list(store2.partial_dir("images", KEY).glob("chunk.*.npz"))) == 3
    other = []
    z8 = store2.get_or_compute_sharded("images", KEY, len(examples),
                                       _compute(examples, lambda p: other.append(len(p)) or encode(p), 8))["z"]
    assert sum(other) == 60
    np.testing.assert_allclose(z8, reference, rtol=1e-6)


_KILLED = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import numpy as np
    from aape_jax.data import feature_store as fs
    import test_extraction_resume as t
    fs.CHUNK_IMAGES = 4
    examples = t.synthetic.make_dataset(num_classes=4, train_per_class=5, test_per_class=0, image_size=40).train
    n = [0]
    def enc(p):
        n[0] += 1
        if n[0] == 7:
            open({ready!r}, "w").close()
            time.sleep(60)  # SIGKILLed here
        return t.encode(p)
    fs.FeatureStore({store!r}).get_or_compute_sharded("images", t.KEY, len(examples), t._compute(examples, enc))
""")


def killed_mid_extraction(tmp_path, root) -> fs.FeatureStore:
    """The store at `root` (local or gs://) after an extraction into it was SIGKILLed in its 7th batch."""
    ready = tmp_path / "ready"
    script = _KILLED.format(tests=str(REPO / "tests"), ready=str(ready), store=str(root))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the extraction did not reach batch 7"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return fs.FeatureStore(root)


def test_sigkill_mid_extraction_resumes_bit_identical(tmp_path, examples, monkeypatch):
    monkeypatch.setattr(fs, "CHUNK_IMAGES", 4)
    reference = fs.FeatureStore(tmp_path / "a").get_or_compute_sharded(
        "images", KEY, len(examples), _compute(examples, encode))["z"]
    store = killed_mid_extraction(tmp_path, tmp_path / "b")
    assert len(list(store.partial_dir("images", KEY).glob("chunk.*.npz"))) == 6
    again = []
    z = store.get_or_compute_sharded("images", KEY, len(examples),
                                     _compute(examples, lambda p: again.append(len(p)) or encode(p)))["z"]
    assert sum(again) == 60 - 6 * 4
    assert z.tobytes() == reference.tobytes()


def test_damaged_chunk_is_recomputed(tmp_path, examples, monkeypatch):
    monkeypatch.setattr(fs, "CHUNK_IMAGES", 4)
    reference = fs.FeatureStore(tmp_path / "a").get_or_compute_sharded(
        "images", KEY, len(examples), _compute(examples, encode))["z"]
    store = fs.FeatureStore(tmp_path / "b")
    n = []

    def dies(p):
        if len(n) == 3:
            raise RuntimeError("killed")
        n.append(1)
        return encode(p)

    with pytest.raises(RuntimeError):
        store.get_or_compute_sharded("images", KEY, len(examples), _compute(examples, dies))
    first = sorted(store.partial_dir("images", KEY).glob("chunk.4.8-*.npz"))[0]
    first.write_bytes(first.read_bytes()[:100])
    again = []
    z = store.get_or_compute_sharded("images", KEY, len(examples),
                                     _compute(examples, lambda p: again.append(len(p)) or encode(p)))["z"]
    assert sum(again) == 60 - 2 * 4
    assert z.tobytes() == reference.tobytes()


def test_progress_bar_advances_per_batch(examples, monkeypatch):
    updates = []
    real = fs.tqdm

    class Recording(real):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(fs, "tqdm", Recording)
    fs.extract_image_features(encode, examples, TRANSFORM, views=3, seed=7, augment=True, batch_size=8)
    assert updates == [8] * 7 + [4]
