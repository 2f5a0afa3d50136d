"""Issue 13: runs whose workdir and feature store are in a bucket (gs://), against a storage emulator on loopback.

The emulator (tests/gcs_emulator.py, started by conftest's `gcs_bucket`) serves
the Cloud Storage JSON API; gcsfs, google-cloud-storage, tensorboardX and
TensorStore (Orbax's arrays) all talk to it over HTTP as they would to GCS.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from aape_jax import AAPEClassifier, ExportedClassifier, storage, train
from aape_jax.data import feature_store as fs
from test_end_to_end import _LONG, _TWO_DEVICES, REPO, STOP_AFTER, _assert_same_run, _main

pytestmark = pytest.mark.usefixtures("gcs_bucket")


def _names(folder: str) -> set[str]:
    return {p.name for p in storage.path(folder).iterdir()}


def _read_json(p: str) -> dict:
    return json.loads(storage.read_text(p))


def _scalars(event_file) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a TensorBoard event file's bytes (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    data, out, i = event_file.read_bytes(), {}, 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_offline_default_runs_in_a_bucket_and_loads_from_it(gcs_dir, toy_clip_dir, shared_data):
    """The Quickstart's job with --workdir gs://...: metrics, config, summaries and checkpoints in the bucket."""
    workdir = f"{gcs_dir}/run"
    out = subprocess.run([sys.executable, "-m", "aape_jax.main", "--config", "experiments/aape_base2new.py:toyworld",
                          f"--config.toyworld_tokenizer_dir={shared_data / 'clip_tokenizer'}", f"--workdir={workdir}"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    assert {"config.json", "metrics.json", "checkpoints", "tensorboard", "feature_store"} <= _names(workdir)
    assert not os.path.exists(os.path.join(REPO, "gs:")), "a local folder was made for the bucket path"
    metrics = _read_json(f"{workdir}/metrics.json")
    assert f"base_acc={metrics['base_acc']:.2f}" in out.stdout and "predicted" in out.stdout
    steps = sorted(int(n) for n in _names(f"{workdir}/checkpoints") if n.isdigit())
    assert steps and "commit_success.txt" in _names(f"{workdir}/checkpoints/{steps[-1]}")
    scalars = {}
    for events in storage.path(f"{workdir}/tensorboard").iterdir():
        for tag, values in _scalars(events).items():
            scalars.setdefault(tag, []).extend(values)
    assert [v for _, v in scalars["eval/base_acc"]] == [pytest.approx(metrics["base_acc"])]
    assert [v for _, v in sorted(scalars["train/loss"])] == pytest.approx([h["loss"] for h in metrics["history"]])

    clf = AAPEClassifier.load(workdir)
    dataset = train.load_dataset(_toyworld_config(shared_data))
    names = dataset.classnames[:5]
    probs = clf.predict_proba([e.image for e in dataset.test[:3]], names)
    assert probs.shape == (3, 5) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    clf.export(names, f"{gcs_dir}/scores.bin")
    exported = ExportedClassifier.load(f"{gcs_dir}/scores.bin")
    np.testing.assert_allclose(exported([e.image for e in dataset.test[:3]]), probs, atol=1e-5)


def _toyworld_config(shared_data):
    from experiments import aape_base2new

    config = aape_base2new.get_config("toyworld")
    config.toyworld_tokenizer_dir = str(shared_data / "clip_tokenizer")
    return config


def test_kill_after_a_checkpoint_then_the_same_command_ends_as_uninterrupted(gcs_dir, uninterrupted):
    workdir, store = f"{gcs_dir}/run", f"{gcs_dir}/store"
    env = dict(os.environ, XLA_FLAGS=_TWO_DEVICES["XLA_FLAGS"])  # os.environ now names the emulator
    proc = subprocess.Popen(_main(workdir, store, *_LONG), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts, deadline = storage.path(f"{workdir}/checkpoints"), time.time() + 300
    while proc.poll() is None:
        if time.time() > deadline or (ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= STOP_AFTER
                                                             for p in ckpts.iterdir())):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
    assert time.time() <= deadline, f"no checkpoint >= step {STOP_AFTER} reached the bucket in 300 s"
    assert not storage.path(f"{workdir}/metrics.json").exists()
    subprocess.run(_main(workdir, store, *_LONG), cwd=REPO, env=env, check=True, capture_output=True)
    _assert_same_run(uninterrupted, _read_json(f"{workdir}/metrics.json"))  # the local run's, bit for bit
    # config.init from the bucket: its trainable tree, evaluated without training, gives the same accuracies.
    subprocess.run(_main(f"{gcs_dir}/eval", store, *_LONG, f"--config.init={workdir}", "--config.num_epochs=0"),
                   cwd=REPO, env=env, check=True, capture_output=True)
    evaluated = _read_json(f"{gcs_dir}/eval/metrics.json")
    assert [evaluated[k] for k in ("base_acc", "new_acc")] == [uninterrupted[k] for k in ("base_acc", "new_acc")]


# ---------------------------------------------------------------- the feature store's entries in a bucket

KEY = {"what": "gcs test features"}


def test_a_damaged_entry_object_is_detected_and_rebuilt(gcs_dir, caplog):
    store = fs.FeatureStore(f"{gcs_dir}/store")
    good = {"z": np.arange(12, dtype=np.float32).reshape(3, 4)}
    path = store.save("images", KEY, good)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # as a copy tool killed mid-way (not this store) leaves it
    calls = []
    with caplog.at_level("WARNING"):
        got = store.get_or_compute("images", KEY, lambda: calls.append(1) or good)
    assert calls == [1] and "cannot read it" in caplog.text and str(path) in caplog.text
    np.testing.assert_array_equal(got["z"], good["z"])
    assert path.read_bytes() == whole  # rebuilt, complete again


def test_a_kill_during_extraction_into_a_bucket_resumes_bit_identical(gcs_dir, tmp_path, monkeypatch):
    import test_extraction_resume as t

    monkeypatch.setattr(fs, "CHUNK_IMAGES", 4)
    examples = t.synthetic.make_dataset(num_classes=4, train_per_class=5, test_per_class=0, image_size=40).train
    reference = fs.FeatureStore(tmp_path / "local").get_or_compute_sharded(
        "images", t.KEY, len(examples), t._compute(examples, t.encode))["z"]
    store = t.killed_mid_extraction(tmp_path, f"{gcs_dir}/store")
    assert not store.path("images", t.KEY).exists()  # no entry a reader could take as complete
    assert len([p for p in store.partial_dir("images", t.KEY).iterdir() if p.name.startswith("chunk.")]) == 6
    again = []
    z = store.get_or_compute_sharded("images", t.KEY, len(examples),
                                     t._compute(examples, lambda p: again.append(len(p)) or t.encode(p)))["z"]
    assert sum(again) == 60 - 6 * 4
    assert z.tobytes() == reference.tobytes()
    assert not store.partial_dir("images", t.KEY).exists()


# ---------------------------------------------------------------- bad input, before any slow work


def _run_main(workdir, *extra, env=None):
    return subprocess.run(_main(workdir, "", *extra), cwd=REPO, env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=120)


def test_a_missing_bucket_is_named_before_any_work(tmp_path):
    out = _run_main("gs://no-such-bucket/run", env=dict(os.environ, AAPE_CACHE_DIR=str(tmp_path / "cache")))
    assert out.returncode == 2
    assert "--workdir gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist" in out.stderr
    assert not (tmp_path / "cache").exists()  # no CLIP was written, nothing encoded


def test_a_missing_feature_store_bucket_is_named_before_any_work(gcs_dir, tmp_path):
    out = _run_main(f"{gcs_dir}/run", "--config.feature_store=gs://no-such-bucket/store",
                    env=dict(os.environ, AAPE_CACHE_DIR=str(tmp_path / "cache")))
    assert out.returncode == 2 and "config.feature_store gs://no-such-bucket/store: bucket" in out.stderr
    assert not (tmp_path / "cache").exists()


def test_no_credentials_without_an_emulator(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud credentials there
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # not a Compute Engine VM: no metadata server to ask
    with pytest.raises(storage.StorageError, match=r"--workdir gs://bucket/run: no Google Cloud credentials found"):
        storage.check_writable("gs://bucket/run", "--workdir")


def test_a_local_path_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(storage.StorageError, match=f"--workdir {tmp_path}/file/run cannot be created"):
        storage.check_writable(tmp_path / "file" / "run", "--workdir")
    with pytest.raises(storage.StorageError, match="only gs:// buckets and local paths"):
        storage.check_writable("s3://bucket/run", "--workdir")


def test_an_interrupted_write_leaves_the_previous_object(gcs_dir):
    from aape_jax import atomic

    target = f"{gcs_dir}/metrics.json"
    atomic.write_json(target, {"a": "ä"})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.atomic_open(target, "wb") as f:
            f.write(b"{half")
            raise RuntimeError("killed")
    assert _read_json(target) == {"a": "ä"}
    assert _names(gcs_dir) == {"metrics.json"}  # no temporary object beside it
