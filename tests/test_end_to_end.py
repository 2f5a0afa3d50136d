"""runlocal end to end: training, 1 vs 8 devices, resume after SIGKILL, inference API, export, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from aape_jax import AAPEClassifier, ExportedClassifier, numerics, train
from aape_jax.data import protocol
from experiments import aape_base2new

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(store, **overrides):
    config = aape_base2new.get_config("runlocal")
    config.feature_store = str(store)
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store):
    workdir = tmp_path_factory.mktemp("run8")
    return str(workdir), train.train_and_evaluate(_config(store), str(workdir))


def test_runlocal_trains_and_writes_metrics(trained):
    workdir, metrics = trained
    history = [h["loss"] for h in metrics["history"]]
    assert history[-1] < history[0]
    on_disk = json.load(open(os.path.join(workdir, "metrics.json")))
    for key in ("base_acc", "new_acc", "harmonic_mean", "train_loss", "history"):
        assert key in on_disk
    assert on_disk["harmonic_mean"] == pytest.approx(
        numerics.harmonic_mean(on_disk["base_acc"], on_disk["new_acc"]))
    assert on_disk["train_loss"] == pytest.approx(history[-1])
    assert metrics["num_devices"] == 8
    run_config = json.load(open(os.path.join(workdir, "config.json")))
    assert run_config["config"]["model"]["combine"] == "token" and run_config["git"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    # Only the trainable tree is checkpointed (with optimizer state and step), never CLIP.
    steps = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())
    saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(workdir) / "checkpoints" / str(steps[-1]) / "state")
    assert set(saved.tree) == {"step", "params", "opt_state"}
    assert set(saved.tree["params"]) == {"aggregator", "generator", "head"}
    assert len(steps) == 3  # keep-N: the latest 3 of 10 epoch checkpoints


def test_one_device_gives_the_same_train_loss(trained, store, tmp_path):
    _, eight = trained
    one = train.train_and_evaluate(_config(store, num_devices=1), str(tmp_path))
    assert one["num_devices"] == 1
    assert one["train_loss"] == pytest.approx(eight["train_loss"], rel=1e-3)


def test_classifier_reproduces_the_evaluator(trained):
    workdir, metrics = trained
    config = _config("unused")
    dataset = train.load_dataset(config)
    base, new = protocol.base_new_split(len(dataset.classnames))
    clf = AAPEClassifier.load(workdir)
    for split, classes in (("base", base), ("new", new)):
        test = protocol.subsample(dataset.test, classes)
        names = [dataset.classnames[i] for i in classes]
        probs = clf.predict_proba([e.image for e in test], names)
        assert probs.shape == (len(test), len(names)) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        acc = protocol.accuracy(probs.argmax(-1), [e.label for e in test])
        assert acc == pytest.approx(metrics[f"{split}_acc"], abs=1e-9)
    assert clf.predict([dataset.test[0].image], names)[0] in names


def test_export_round_trip(trained, tmp_path):
    workdir, _ = trained
    clf = AAPEClassifier.load(workdir)
    names = ["red circle", "white ring", "a class never trained on"]
    images = [e.image for e in train.load_dataset(_config("unused")).test[:5]]
    path = tmp_path / "scores.bin"
    clf.export(names, path)
    exported = ExportedClassifier.load(path)
    assert exported.class_names == names
    np.testing.assert_allclose(exported(images), clf.predict_proba(images, names), atol=1e-5)
    np.testing.assert_allclose(exported(images[:2]), clf.predict_proba(images[:2], names), atol=1e-5)


def _main(workdir, store, *extra):
    return [sys.executable, "-m", "aape_jax.main", "--config", "experiments/aape_base2new.py:runlocal",
            f"--config.feature_store={store}", f"--workdir={workdir}", *extra]


_LONG = ["--config.num_epochs=16", "--config.model.combine=feature"]  # 32 steps: stopped after step STOP_AFTER
STOP_AFTER = 12
_TWO_DEVICES = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _interrupt(workdir, store, sig, stderr=subprocess.DEVNULL):
    """Starts a long run, sends `sig` once step >= STOP_AFTER is checkpointed; returns the exit code."""
    proc = subprocess.Popen(_main(workdir, store, *_LONG), cwd=REPO, env=_TWO_DEVICES, stdout=subprocess.DEVNULL,
                            stderr=stderr)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= STOP_AFTER for p in ckpts.iterdir()):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    return proc.wait()


def _assert_same_run(a, b):
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    for key in ("base_acc", "new_acc", "harmonic_mean", "train_loss"):
        assert a[key] == b[key]


def test_resume_after_sigkill_equals_uninterrupted(uninterrupted, store, tmp_path):
    assert _interrupt(tmp_path, store, signal.SIGKILL) == -signal.SIGKILL, "the run ended before the kill"
    assert not (tmp_path / "metrics.json").exists()
    subprocess.run(_main(tmp_path, store, *_LONG), cwd=REPO, env=_TWO_DEVICES, check=True, capture_output=True)
    _assert_same_run(uninterrupted, json.load(open(tmp_path / "metrics.json")))


def test_sigterm_checkpoints_exits_75_and_resumes(uninterrupted, store, tmp_path):
    from aape_jax.distributed import PREEMPTED_EXIT_CODE

    assert _interrupt(tmp_path, store, signal.SIGTERM) == PREEMPTED_EXIT_CODE
    assert not (tmp_path / "metrics.json").exists()
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert STOP_AFTER <= steps[-1] < 32
    subprocess.run(_main(tmp_path, store, *_LONG), cwd=REPO, env=_TWO_DEVICES, check=True, capture_output=True)
    _assert_same_run(uninterrupted, json.load(open(tmp_path / "metrics.json")))


# ---------------------------------------------------------------- bad input


def test_truncated_checkpoint_falls_back_and_is_kept_aside(trained, store, tmp_path, caplog):
    import logging
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(trained[0], workdir)
    latest = max(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    step_dir = workdir / "checkpoints" / str(latest)
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if os.path.getsize(os.path.join(r, f))]
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 3)
    snapshot = {os.path.relpath(f, step_dir): open(f, "rb").read() for f in files}
    caplog.set_level(logging.INFO, logger="absl")
    metrics = train.train_and_evaluate(_config(store), str(workdir))
    for key in ("base_acc", "new_acc", "train_loss"):
        assert metrics[key] == trained[1][key]
    # The damaged step was set aside for inspection, as it was; the last epoch was redone and saved anew.
    damaged = workdir / "checkpoints" / f"{latest}.damaged"
    kept = {os.path.relpath(os.path.join(r, f), damaged): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(damaged) for f in fs}
    assert {name: kept.get(name) for name in snapshot} == snapshot
    assert (workdir / "checkpoints" / str(latest)).is_dir()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"checkpoint step {latest}" in w for w in warnings), warnings


def test_nan_features_stop_training_naming_the_step(store, tmp_path, monkeypatch):
    real = train.image_features

    def poisoned(*args, **kwargs):
        z = real(*args, **kwargs)
        if kwargs.get("augment"):
            z = z.copy()
            z[3, :, 0] = np.nan
        return z

    monkeypatch.setattr(train, "image_features", poisoned)
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step (\d+) \(epoch 1; metrics of steps "
                                                 r"1-\d+ fetched together\)"):
        train.train_and_evaluate(_config(store), str(tmp_path))


def test_prompt_file_problems(store, tmp_path):
    names = train.load_dataset(_config("unused")).classnames
    prompts = {n: [f"a {n}."] for n in names[1:]}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    with pytest.raises(ValueError, match=names[0]):
        train.train_and_evaluate(_config(store, **{"prompts.path": str(path)}), str(tmp_path / "w1"))
    prompts[names[0]] = []
    path.write_text(json.dumps(prompts))
    with pytest.raises(ValueError, match=names[0]):
        train.train_and_evaluate(_config(store, **{"prompts.path": str(path)}), str(tmp_path / "w2"))


def test_feature_cache_of_another_checkpoint_is_not_used(store, tmp_path):
    from aape_jax import clip
    from aape_jax.clip import tiny
    from aape_jax.data.feature_store import FeatureStore
    from aape_jax.data.text_features import template_features

    fs = FeatureStore(tmp_path / "fs")
    a = clip.load(tiny.write_checkpoint(tmp_path / "a", seed=0))
    b = clip.load(tiny.write_checkpoint(tmp_path / "b", seed=1))
    za = template_features(a, fs, "a photo of a {}.", ["cat", "dog"])
    zb = template_features(b, fs, "a photo of a {}.", ["cat", "dog"])
    assert not np.allclose(za, zb)
    np.testing.assert_allclose(zb, b.encode_text(b.tokenize(["a photo of a cat.", "a photo of a dog."]))
                               / np.linalg.norm(b.encode_text(b.tokenize(["a photo of a cat.", "a photo of a dog."])),
                                                axis=-1, keepdims=True), atol=1e-6)


def test_suffix_token_position_end_to_end(store, tmp_path):
    # The default is "prefix" (the other tests); "suffix" runs each class prefix once (K/V cache).
    metrics = train.train_and_evaluate(_config(store, **{"model.token_position": "suffix", "num_epochs": 3}),
                                       str(tmp_path))
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    clf = AAPEClassifier.load(tmp_path)
    assert clf.model.config.head.position == "suffix"
    dataset = train.load_dataset(_config("unused"))
    _, new = protocol.base_new_split(len(dataset.classnames))
    test = protocol.subsample(dataset.test, new)
    probs = clf.predict_proba([e.image for e in test], [dataset.classnames[i] for i in new])
    assert protocol.accuracy(probs.argmax(-1), [e.label for e in test]) == pytest.approx(metrics["new_acc"])
