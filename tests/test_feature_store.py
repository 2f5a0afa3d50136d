"""On-disk feature store and image-feature extraction."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from aape_jax.clip.preprocess import ImageTransform, eval_transform
from aape_jax.data import feature_store as fs
from aape_jax.data import synthetic
from aape_jax.data.types import Example

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def warnings_log(caplog):
    """Captured absl warnings (absl logs through the std 'absl' logger)."""
    caplog.set_level(logging.INFO, logger="absl")
    return caplog


def _warned(caplog, text: str) -> bool:
    return any(r.levelno == logging.WARNING and text in r.getMessage() for r in caplog.records)


def _arrays(value: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "features": np.full((5, 2, 8), value, dtype=np.float32),
        "labels": np.arange(5, dtype=np.int64),
        "half": np.linspace(0, 1, 7).astype(np.float16),
    }


# ------------------------------------------------------------------ fingerprints
def test_fingerprint_canonical():
    a = fs.fingerprint({"model": "x", "n": 3, "t": (1, 2)})
    assert a == fs.fingerprint({"t": [1, 2], "n": 3, "model": "x"})  # key order, tuple vs list
    assert len(a) == 64 and a != fs.fingerprint({"model": "x", "n": 4, "t": (1, 2)})
    arr = np.arange(6, dtype=np.float32)
    assert fs.fingerprint({"a": arr}) == fs.fingerprint({"a": arr.copy()})
    assert fs.fingerprint({"a": arr}) != fs.fingerprint({"a": arr.reshape(2, 3)})
    assert fs.fingerprint({"a": arr}) != fs.fingerprint({"a": arr.view(np.int32)})
    assert fs.fingerprint({"b": b"abc"}) == fs.fingerprint({"b": bytearray(b"abc")})
    assert fs.fingerprint({"p": pathlib.Path("/x/y")}) == fs.fingerprint({"p": "/x/y"})
    t = ImageTransform.openai(224)
    assert fs.fingerprint({"t": t}) == fs.fingerprint({"t": ImageTransform.openai(224)})
    assert fs.fingerprint({"t": t}) != fs.fingerprint({"t": ImageTransform.openai(336)})
    with pytest.raises(TypeError):
        fs.fingerprint({"o": object()})
    with pytest.raises(ValueError):
        fs.fingerprint({"f": float("nan")})


def test_file_digest(tmp_path):
    p = tmp_path / "weights.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    p.write_bytes(data)
    assert fs.file_digest(p) == hashlib.sha256(data).hexdigest()
    assert fs.file_digest(str(p)) == hashlib.sha256(data).hexdigest()  # cached path
    p.write_bytes(data + b"!")  # size (and mtime) change -> re-hashed
    assert fs.file_digest(p) == hashlib.sha256(data + b"!").hexdigest()


# ------------------------------------------------------------------ store
def test_round_trip(tmp_path):
    store = fs.FeatureStore(tmp_path / "store")
    key = {"model": "abc", "keys": ["a", "b"], "views": 2}
    assert store.load("img", key) is None
    path = store.save("img", key, _arrays())
    assert path == store.path("img", key)
    assert path.parent == tmp_path / "store" and path.name.startswith("img-") and path.suffix == ".npz"
    assert path.name == f"img-{fs.fingerprint(key)[:16]}.npz"
    got = store.load("img", key)
    assert set(got) == set(_arrays())
    for name, a in _arrays().items():
        assert got[name].dtype == a.dtype
        np.testing.assert_array_equal(got[name], a)
    # Kinds are separate families.
    assert store.path("text", key) != path and store.load("text", key) is None


def test_get_or_compute_logs_and_reuses(tmp_path, warnings_log):
    store = fs.FeatureStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return _arrays(2.0)

    a = store.get_or_compute("img", {"k": 1}, compute)
    b = store.get_or_compute("img", {"k": 1}, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(a["features"], b["features"])
    msgs = [r.getMessage() for r in warnings_log.records]
    assert any(m.startswith("computed ") for m in msgs) and any(m.startswith("reused ") for m in msgs)


def test_reserved_names_rejected(tmp_path):
    with pytest.raises(ValueError, match="__key__"):
        fs.FeatureStore(tmp_path).save("img", {"k": 1}, {"__key__": np.zeros(1)})
    with pytest.raises(ValueError):
        fs.FeatureStore(tmp_path).path("bad-kind", {"k": 1})


def test_key_mismatch_is_a_miss(tmp_path, warnings_log):
    store = fs.FeatureStore(tmp_path)
    old, new = {"ckpt": "old"}, {"ckpt": "new"}
    store.save("img", old, _arrays(1.0))
    # Simulate a fingerprint-prefix collision / a file copied in from elsewhere.
    shutil.copy(store.path("img", old), store.path("img", new))
    assert store.load("img", new) is None
    assert _warned(warnings_log, "stored key differs")
    got = store.get_or_compute("img", new, lambda: _arrays(5.0))
    assert float(got["features"][0, 0, 0]) == 5.0
    assert float(store.load("img", new)["features"][0, 0, 0]) == 5.0
    assert float(store.load("img", old)["features"][0, 0, 0]) == 1.0


def test_truncated_file_is_rebuilt(tmp_path, warnings_log):
    store = fs.FeatureStore(tmp_path)
    path = store.save("img", {"k": 1}, _arrays(1.0))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    assert store.load("img", {"k": 1}) is None
    assert _warned(warnings_log, "cannot read it")
    got = store.get_or_compute("img", {"k": 1}, lambda: _arrays(3.0))
    assert float(got["features"].max()) == 3.0
    assert store.load("img", {"k": 1}) is not None
    # Empty and garbage files too.
    path.write_bytes(b"")
    assert store.load("img", {"k": 1}) is None
    path.write_bytes(b"PK\x03\x04 garbage")
    assert store.load("img", {"k": 1}) is None


def _rewrite_entry(path: pathlib.Path, edit) -> None:
    """Rewrites an npz with `edit(dict)` applied, keeping everything else."""
    with np.load(path) as npz:
        d = {n: npz[n] for n in npz.files}
    edit(d)
    with open(path, "wb") as f:
        np.savez(f, **d)


def test_corrupted_array_fails_checksum(tmp_path, warnings_log):
    store = fs.FeatureStore(tmp_path)
    path = store.save("img", {"k": 1}, _arrays(1.0))

    def flip(d):
        d["features"] = d["features"].copy()
        d["features"][3, 1, 4] = 7.0

    _rewrite_entry(path, flip)
    assert store.load("img", {"k": 1}) is None
    assert _warned(warnings_log, "'features' fails its sha256 checksum")
    got = store.get_or_compute("img", {"k": 1}, lambda: _arrays(1.0))
    assert float(got["features"].max()) == 1.0
    assert store.load("img", {"k": 1}) is not None


def test_flipped_byte_on_disk_is_a_miss(tmp_path):
    store = fs.FeatureStore(tmp_path)
    a = {"x": np.arange(4096, dtype=np.float32)}
    path = store.save("img", {"k": 1}, a)
    raw = bytearray(path.read_bytes())
    # Find the array's bytes and flip one in the middle of them.
    at = raw.find(a["x"].tobytes()[:64])
    assert at > 0
    raw[at + 8000] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert fs.FeatureStore(tmp_path).load("img", {"k": 1}) is None


def test_missing_marker_or_extra_array_is_a_miss(tmp_path, warnings_log):
    store = fs.FeatureStore(tmp_path)
    path = store.save("img", {"k": 1}, _arrays())
    _rewrite_entry(path, lambda d: d.pop("__complete__"))
    assert store.load("img", {"k": 1}) is None
    assert _warned(warnings_log, "__complete__")
    path = store.save("img", {"k": 1}, _arrays())
    _rewrite_entry(path, lambda d: d.update(extra=np.zeros(2)))
    assert store.load("img", {"k": 1}) is None


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    store = fs.FeatureStore(tmp_path)
    for i in range(3):
        store.save("img", {"k": i}, _arrays(float(i)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        store.path("img", {"k": i}).name for i in range(3)
    )

    # A write that dies half way leaves the old entry untouched and no temp file.
    real_savez = np.savez

    def dying_savez(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(fs.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        store.save("img", {"k": 0}, _arrays(9.0))
    monkeypatch.setattr(fs.np, "savez", real_savez)
    assert len(list(tmp_path.iterdir())) == 3
    assert float(store.load("img", {"k": 0})["features"].max()) == 0.0


def test_concurrent_thread_writers_and_readers(tmp_path):
    store = fs.FeatureStore(tmp_path)
    key = {"k": "shared"}
    big = 200_000  # ~0.8 MB per array: writes take long enough to overlap
    payloads = {w: {"x": np.full(big, w, dtype=np.float32)} for w in range(4)}
    seen, errors = [], []

    def writer(w):
        try:
            for _ in range(5):
                store.save("img", key, payloads[w])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader(stop):
        while not stop.is_set():
            got = store.load("img", key)
            if got is not None:
                seen.append(float(got["x"][0]))
                # Never a mix of two writers' data (recorded: a failed assert
                # inside a thread would not fail the test).
                if not np.all(got["x"] == got["x"][0]):
                    errors.append(AssertionError("mixed data from two writers"))

    stop = threading.Event()
    r = threading.Thread(target=reader, args=(stop,))
    r.start()
    ws = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    r.join()
    assert not errors
    assert seen, "the reader never saw a complete entry"
    final = store.load("img", key)
    assert final is not None and float(final["x"][0]) in {0.0, 1.0, 2.0, 3.0}
    assert [p.name for p in tmp_path.iterdir()] == [store.path("img", key).name]


def test_concurrent_process_writers(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from aape_jax.data.feature_store import FeatureStore
        root, w = sys.argv[1], int(sys.argv[2])
        store = FeatureStore(root)
        for i in range(10):
            store.get_or_compute("img", {"k": "shared", "i": i % 2},
                                 lambda: {"x": np.full(100_000, w, np.float32)})
            store.save("img", {"k": "shared", "i": i % 2}, {"x": np.full(100_000, w, np.float32)})
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(w)], env=env, cwd=REPO)
        for w in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = fs.FeatureStore(tmp_path)
    for i in (0, 1):
        got = store.load("img", {"k": "shared", "i": i})
        assert got is not None and float(got["x"][0]) in (1.0, 2.0)
        assert np.all(got["x"] == got["x"][0])
    assert len(list(tmp_path.iterdir())) == 2


# ------------------------------------------------------------------ extraction
_W = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)


def fake_encode(pixels: np.ndarray) -> np.ndarray:
    """[n, H, W, 3] -> [n, 16]: 4x4 mean-pool then a fixed random projection.

    One image at a time: a BLAS matmul over n rows need not round each row as
    it does for one row (it did not with the numpy that installs today), and
    the tests below compare extractions bit for bit across batch sizes.
    """
    def one(image: np.ndarray) -> np.ndarray:
        h, w, _ = image.shape
        pooled = image.reshape(4, h // 4, 4, w // 4, 3).mean(axis=(1, 3))  # [4, 4, 3]
        return pooled.reshape(48) @ _W  # [16]

    return np.stack([one(image) for image in pixels])


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return synthetic.make_dataset(num_classes=3, train_per_class=3, test_per_class=0, image_size=40).train


TRANSFORM = ImageTransform.openai(32)


def test_augmented_features_independent_of_batch_size(examples):
    runs = [
        fs.extract_image_features(
            fake_encode, examples, TRANSFORM, views=3, seed=11, augment=True, batch_size=bs
        )
        for bs in (1, 4, 64)
    ]
    assert runs[0].shape == (9, 3, 16) and runs[0].dtype == np.float32
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    # Views differ from each other, and the seed matters.
    assert not np.allclose(runs[0][:, 0], runs[0][:, 1])
    other = fs.extract_image_features(fake_encode, examples, TRANSFORM, views=3, seed=12, augment=True)
    assert not np.allclose(other, runs[0])
    # A view of an example is unchanged when fewer views / examples are asked for.
    fewer = fs.extract_image_features(fake_encode, examples[:4], TRANSFORM, views=2, seed=11, augment=True)
    np.testing.assert_array_equal(fewer, runs[0][:4, :2])


def test_eval_features_use_eval_transform(examples):
    got = fs.extract_image_features(
        fake_encode, examples, TRANSFORM, views=1, seed=0, augment=False, batch_size=4
    )
    want = fake_encode(eval_transform([e.image for e in examples], TRANSFORM))
    assert got.shape == (9, 1, 16)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="views must be 1"):
        fs.extract_image_features(fake_encode, examples, TRANSFORM, views=2, seed=0, augment=False)


def test_non_finite_features_name_the_example(examples):
    bad_key = examples[5].key

    def encode(pixels):
        out = fake_encode(pixels)
        # Poison exactly the images equal to example 5's eval pixels.
        target = eval_transform(examples[5].image, TRANSFORM)[0]
        for j in range(len(pixels)):
            if np.array_equal(pixels[j], target):
                out[j, 3] = np.nan
        return out

    with pytest.raises(ValueError, match=bad_key):
        fs.extract_image_features(encode, examples, TRANSFORM, views=1, seed=0, augment=False, batch_size=4)


def test_extract_empty_and_bad_encode(examples):
    out = fs.extract_image_features(fake_encode, [], TRANSFORM, views=2, seed=0, augment=True)
    assert out.shape[:2] == (0, 2)
    with pytest.raises(ValueError, match="expected"):
        fs.extract_image_features(lambda p: np.zeros((1, 4)), examples, TRANSFORM, views=1, seed=0, augment=False)


def test_extracted_features_round_trip_through_store(tmp_path, examples):
    store = fs.FeatureStore(tmp_path)
    key = {"model": "fake", "keys": [e.key for e in examples], "transform": TRANSFORM, "views": 2, "seed": 1}
    compute = lambda: {  # noqa: E731
        "features": fs.extract_image_features(fake_encode, examples, TRANSFORM, views=2, seed=1, augment=True)
    }
    a = store.get_or_compute("image_features", key, compute)["features"]
    b = store.get_or_compute("image_features", key, lambda: pytest.fail("recomputed"))["features"]
    np.testing.assert_array_equal(a, b)
