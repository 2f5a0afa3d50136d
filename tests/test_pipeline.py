"""The parallel input pipeline: worker counts do not change features, bounded memory, bad images, Ctrl-C."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from aape_jax.clip.preprocess import ImageTransform, eval_transform, train_augment
from aape_jax.data import feature_store as fs
from aape_jax.data import pipeline
from aape_jax.data.types import Example
from aape_jax.errors import BadImageError

REPO = pathlib.Path(__file__).resolve().parents[1]
TRANSFORM = ImageTransform.openai(32)
_W = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)


def encode(pixels: np.ndarray) -> np.ndarray:
    """[n, 32, 32, 3] -> [n, 16]: 4x4 mean-pool and a fixed projection, row by row: a batched matmul's
    bits may depend on the batch size (they did with OpenBLAS on an AMD EPYC), and the test compares
    images encoded in batches with images encoded alone."""
    pooled = pixels.reshape(len(pixels), 4, 8, 4, 8, 3).mean(axis=(2, 4)).reshape(len(pixels), 48)
    return np.stack([row @ _W for row in pooled])


def write_jpegs(folder: pathlib.Path, n: int, seed: int = 0) -> list[Example]:
    """`n` JPEG files of mixed sizes and modes (photo-like smooth gradients plus noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(x) for x in rng.integers(24, 90, 2))
        yy, xx = np.mgrid[:h, :w]
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1)
        pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if i % 5 == 3:
            image = image.convert("L")
        path = folder / f"img{i:03d}.jpg"
        image.save(path, quality=90)
        out.append(Example(image=str(path), label=i % 3, key=f"img{i:03d}.jpg"))
    return out


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return write_jpegs(tmp_path_factory.mktemp("jpegs"), 23)


@pytest.mark.parametrize("augment,views", [(True, 3), (False, 1)])
def test_worker_count_does_not_change_features(examples, augment, views):
    runs = {w: fs.extract_image_features(encode, examples, TRANSFORM, views=views, seed=5, augment=augment,
                                         batch_size=4, workers=w, prefetch=2) for w in (0, 1, 2, 3)}
    for w in (1, 2, 3):
        np.testing.assert_array_equal(runs[w], runs[0])
    # ... and equal to the transforms applied one image at a time, view v of example i from its own rng.
    for i in (0, 7, 22):
        for v in range(views):
            px = (train_augment(examples[i].image, TRANSFORM, np.random.default_rng([5, v, i])) if augment
                  else eval_transform(examples[i].image, TRANSFORM))
            np.testing.assert_array_equal(runs[2][i, v], encode(px)[0])


def test_rows_keep_the_whole_source_indices(examples):
    whole = fs.extract_image_features(encode, examples, TRANSFORM, views=2, seed=1, augment=True, batch_size=4,
                                      workers=2)
    part = fs.extract_image_features(encode, examples, TRANSFORM, views=2, seed=1, augment=True, batch_size=4,
                                     workers=2, rows=slice(9, 17))
    np.testing.assert_array_equal(part, whole[9:17])


def test_decoded_images_are_bounded_by_the_prefetch_depth(examples, monkeypatch):
    # A source much larger than the prefetch depth: decoded-but-unconsumed images never exceed
    # (prefetch + 1) batches, however slowly the consumer goes.
    lock, state = threading.Lock(), {"decoded": 0, "consumed": 0, "most": 0}
    real = pipeline.view_crop

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        with lock:
            state["decoded"] += 1
            state["most"] = max(state["most"], state["decoded"] - state["consumed"])
        return out

    monkeypatch.setattr(pipeline, "view_crop", counting)
    jobs = [(i % len(examples), v) for i in range(120) for v in range(2)]  # 240 views of 23 files
    batches = pipeline.ViewBatches(examples, jobs, TRANSFORM, augment=True, seed=0, batch_size=4, workers=2,
                                   prefetch=2)
    n = 0
    for start, pixels in batches.batches(range(0, len(jobs), 4)):
        assert start == n and pixels.shape == (4, 32, 32, 3)
        time.sleep(0.002)  # a slow encoder: the pool gets ahead as far as it may
        with lock:
            state["consumed"] += len(pixels)
        n += len(pixels)
    assert n == len(jobs) and state["decoded"] == len(jobs)
    assert batches.max_pending <= 3
    assert 4 < state["most"] <= 3 * 4  # it did decode ahead, but never more than 3 batches


def test_workers_do_all_the_per_image_work(examples, monkeypatch):
    # Decode, crop and normalisation all run on the pool: work left on the calling thread would not
    # shrink as workers are added (what `bench pipeline`'s worker_scaling measures).
    callers, lock = set(), threading.Lock()
    real_crop, real_normalize = pipeline.view_crop, pipeline.normalize

    def recording(real):
        def call(*args, **kwargs):
            with lock:
                callers.add((real.__name__, threading.current_thread().name.startswith("decode")))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(pipeline, "view_crop", recording(real_crop))
    monkeypatch.setattr(pipeline, "normalize", recording(real_normalize))
    jobs = [(i, 0) for i in range(len(examples))]
    batches = pipeline.ViewBatches(examples, jobs, TRANSFORM, augment=False, seed=0, batch_size=4, workers=2)
    got = np.concatenate([p for _, p in batches.batches(range(0, len(jobs), 4))])
    assert callers == {("view_crop", True), ("normalize", True)}
    np.testing.assert_array_equal(got, eval_transform([e.image for e in examples], TRANSFORM))


def _corrupt(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a truncated JPEG: the header parses, the decode fails


def test_corrupt_jpeg_names_the_file_and_leaves_no_entry(tmp_path):
    examples = write_jpegs(tmp_path / "folder", 17)
    _corrupt(pathlib.Path(examples[9].image))
    store = fs.FeatureStore(tmp_path / "store")
    key = {"model": "fake", "views": 2}
    compute = lambda rows: {"z": fs.extract_image_features(encode, examples, TRANSFORM, views=2, seed=0,
                                                           augment=True, batch_size=4, workers=2, rows=rows)}
    with pytest.raises(BadImageError) as e:
        store.get_or_compute_sharded("images", key, len(examples), compute)
    assert examples[9].image in str(e.value) and "img009.jpg" in str(e.value)
    assert store.load("images", key) is None
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]  # the pool is gone
    # The file repaired, the rerun completes and equals a clean extraction.
    write_jpegs(tmp_path / "folder", 17)
    got = store.get_or_compute_sharded("images", key, len(examples), compute)["z"]
    np.testing.assert_array_equal(got, compute(None)["z"])


_SIGINT_CHILD = textwrap.dedent("""
    import signal, sys, threading, time
    # A shell's background job starts with SIGINT ignored, and Python then installs no handler:
    # restore the terminal's Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from test_pipeline import TRANSFORM, encode, write_jpegs
    import pathlib
    from aape_jax.data import feature_store as fs

    examples = write_jpegs(pathlib.Path({folder!r}), 40)

    def slow(pixels):
        print("encoding", flush=True)
        time.sleep(0.3)
        return encode(pixels)

    store = fs.FeatureStore({store!r})
    try:
        store.get_or_compute_sharded("images", {{"k": 1}}, len(examples), lambda rows: {{"z": fs.extract_image_features(
            slow, examples, TRANSFORM, views=4, seed=0, augment=True, batch_size=4, workers=2, rows=rows)}})
    except KeyboardInterrupt:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("decode")]
        print("interrupted; decode threads alive:", alive, flush=True)
        sys.exit(3)
""")


def test_sigint_stops_the_workers_and_leaves_nothing_half_written(tmp_path):
    script = _SIGINT_CHILD.format(tests=str(REPO / "tests"), folder=str(tmp_path / "jpegs"),
                                  store=str(tmp_path / "store"))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in child.stdout:
        if "encoding" in line:  # after the progress bar's carriage return, on its line
            break
    time.sleep(0.1)  # mid-batch, the pool busy decoding ahead
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 3, out
    assert "decode threads alive: []" in out
    store = fs.FeatureStore(tmp_path / "store")
    assert store.load("images", {"k": 1}) is None
    leftovers = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and ".tmp" in p.name]
    assert not leftovers, leftovers
