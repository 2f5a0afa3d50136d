"""Issue 11 ("Nothing lost, nothing silent"), items 3, 5, 6, 8, 9, 10 and 12 (item 11: test_extraction_resume.py).

Everything here is fast: tiny CLIPs, a hand-made training workdir (a real Orbax
checkpoint of an initialised AAPE tree, no training), stub sweeps.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aape_jax import atomic, checkpoint, clip, errors, results, zeroshot
from aape_jax.checkpoint import CheckpointError, Checkpointer
from aape_jax.clip import tiny
from aape_jax.data import feature_store as fs
from aape_jax.data import protocol, synthetic
from aape_jax.inference import AAPEClassifier
from aape_jax.models.aape import AAPE, aape_config
from aape_jax.prompts import MissingPromptsError, match_classes, read_class_descriptions
from aape_jax.prompts import cli as prompts_cli
from experiments import aape_base2new

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def absl_log(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    return caplog


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    return tiny.write_checkpoint(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def model(clip_dir):
    return clip.load(clip_dir)


def _make_workdir(root: pathlib.Path, clip_dir: str, method: str = "aape", steps=(3,)) -> pathlib.Path:
    """A training workdir as train.py leaves it: config.json, random_clip/, checkpoints/<step>."""
    workdir = root / f"run_{method}"
    config = aape_base2new.get_config("runlocal")
    config.method = method
    shutil.copytree(clip_dir, workdir / "random_clip")
    atomic.write_json(workdir / "config.json", {"config": config.to_dict(), "git": "test"})
    frozen = clip.load(workdir / "random_clip")
    net = AAPE(aape_config(config.model, frozen.config))
    d = frozen.config.projection_dim
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    for i, step in enumerate(steps):
        params = net.init(jax.random.key(i), jnp.zeros((1, d)), jnp.zeros((1, 1, d)), jnp.ones((1, 1), bool))
        state = {"step": jnp.asarray(step, jnp.int32), "params": params["params"]}
        ckpt.save(step, state, {"history": [{"epoch": step}]})
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, clip_dir) -> pathlib.Path:
    return _make_workdir(tmp_path_factory.mktemp("wd"), clip_dir)


@pytest.fixture(scope="module")
def classifier(workdir) -> AAPEClassifier:
    return AAPEClassifier.load(workdir)


@pytest.fixture
def photos(tmp_path) -> pathlib.Path:
    """Two good images, a text file named .jpg and a truncated JPEG."""
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / name)
    (d / "notanimage.jpg").write_text("this is not an image")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "b_truncated.jpg")
    data = (d / "b_truncated.jpg").read_bytes()
    (d / "b_truncated.jpg").write_bytes(data[: len(data) // 2])
    return d


# ------------------------------------------------------------------ item 3: bad images


def test_zeroshot_cli_skips_undecodable_images_and_exits_nonzero(model, photos, capsys):
    rc = zeroshot.main(["--clip", model.source, "--images", str(photos), "--classes", "cat,dog"])
    out, err = capsys.readouterr()
    assert rc == 1
    printed = [line.split("\t")[0] for line in out.strip().splitlines()]
    assert printed == [str(photos / "a.png"), str(photos / "c.jpg")]  # the good ones, all of them
    assert "skipped 2 of 4" in err
    assert str(photos / "notanimage.jpg") in err and str(photos / "b_truncated.jpg") in err
    assert "Traceback" not in err

    rc = zeroshot.main(["--clip", model.source, "--images", str(photos), "--classes", "cat,dog",
                        "--on_bad_image", "fail"])
    out, err = capsys.readouterr()
    assert rc == 2 and str(photos / "b_truncated.jpg") in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3


def test_classifier_skips_undecodable_images_by_path(classifier, photos, absl_log):
    good, bad = str(photos / "a.png"), str(photos / "notanimage.jpg")
    probs = classifier.predict_proba([good, bad, good], ["cat", "dog"])
    assert probs.shape == (3, 2)
    assert np.isnan(probs[1]).all() and np.isfinite(probs[[0, 2]]).all()
    np.testing.assert_allclose(probs[0], probs[2])
    assert [p for p, _ in classifier.skipped] == [bad]
    assert bad in _warnings(absl_log)
    labels = classifier.predict([good, bad], ["cat", "dog"])
    assert labels[0] in ("cat", "dog") and labels[1] is None
    with pytest.raises(errors.BadImageError, match="notanimage.jpg"):
        classifier.predict([bad], ["cat", "dog"], on_bad_image="fail")


# ------------------------------------------------------------------ item 5: one-line errors


def test_main_missing_dataset_root_is_one_line_exit_2(tmp_path):
    workdir = tmp_path / "w"
    prompts = tmp_path / "caltech101.json"  # a prompt file is asked for before the data is looked at
    prompts.write_text(json.dumps({"face": ["a face."]}))
    cmd = [sys.executable, "-m", "aape_jax.main", "--config", "experiments/aape_base2new.py:runlocal",
           "--config.dataset.name=caltech101", f"--config.dataset.root={tmp_path / 'nodata'}",
           f"--config.prompts.path={prompts}", "--workdir", str(workdir)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line[:1] in "IWE" or line.startswith("error")]
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1 and str(tmp_path / "nodata") in error[0]
    assert any("hint: set --config.dataset.root" in line for line in lines)
    assert "Traceback" in (workdir / "error.log").read_text()  # the traceback is kept, in the log


def test_no_space_is_said_plainly(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    target = tmp_path / "metrics.json"
    with pytest.raises(errors.NoSpaceError) as e:
        atomic.write_json(target, {"a": 1})
    assert str(e.value) == f"No space left on device while writing {target}"
    assert not list(tmp_path.iterdir())  # no temp file left behind
    # However a library wraps it ("handle is closed" on top), the report says what happened.
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/store/x.npz")
        except OSError as inner:
            raise OSError("handle is closed") from inner
    except OSError as outer:
        import io

        stream = io.StringIO()
        assert errors.report(outer, stream=stream) == 2
    assert "No space left on device while writing /store/x.npz" in stream.getvalue()


def test_prompts_generate_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d.json"
    out.write_text(json.dumps({"cat": ["A cat."]}))  # nothing to generate: no model is loaded
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    rc = prompts_cli.main(["generate", "--model", str(tmp_path / "nomodel"), "--classes", "cat", "--out", str(out),
                           "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"No space left on device while writing {out}" in err and "Traceback" not in err


def test_results_unwritable_out_is_one_line(tmp_path, capsys):
    run = tmp_path / "runs" / "aape" / "dtd" / "seed1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"base_acc": 80.0, "new_acc": 60.0, "harmonic_mean": 68.6}))
    (tmp_path / "afile").write_text("")
    rc = results.main([str(tmp_path / "runs"), "--out", str(tmp_path / "afile")])
    err = capsys.readouterr().err
    assert rc == 2 and "afile" in err and "Traceback" not in err


def test_zeroshot_bad_clip_is_one_line_and_verbose_has_the_traceback(tmp_path, photos, capsys):
    args = ["--clip", str(tmp_path / "noclip"), "--images", str(photos / "a.png"), "--classes", "cat"]
    assert zeroshot.main(args) == 2
    err = capsys.readouterr().err
    assert "noclip" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert zeroshot.main([*args, "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def _fake_repo(tmp_path):
    """A repository root with the one config file the sweep checks for."""
    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    (root / "experiments" / "aape_base2new.py").write_text("")
    return root


def test_sweep_os_error_is_one_line(tmp_path):
    root = _fake_repo(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--root", str(root), "--runs",
                           str(tmp_path / "runs"), "--methods", "aape", "--datasets", "dtd", "--seeds", "1",
                           "--python", str(tmp_path / "no" / "python")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "[sweep] error:" in proc.stderr and str(tmp_path / "no" / "python") in proc.stderr


# ------------------------------------------------------------------ item 6: empty prompt lists


def test_empty_prompt_list_is_a_missing_class(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"cat": ["A cat."], "gerenuk": []}))
    descriptions = read_class_descriptions(path)
    r = match_classes(["cat", "gerenuk"], descriptions, fallback_templates=["a photo of a {}."], source=str(path))
    assert r.prompts == [["A cat."], ["a photo of a gerenuk."]] and r.fallback_classes == ["gerenuk"]
    with pytest.raises(MissingPromptsError) as e:
        match_classes(["cat", "gerenuk"], descriptions, source=str(path))
    assert e.value.missing == ["gerenuk"]
    assert "--config.prompts.fallback_to_templates=true" in str(e.value)
    # An empty list in the dict itself (not read from a file) counts as missing too.
    with pytest.raises(MissingPromptsError):
        match_classes(["gerenuk"], {"cat": ["c"], "gerenuk": []})


def test_training_prompts_fall_back_for_an_empty_list(tmp_path):
    from aape_jax import train

    names = synthetic.make_dataset(3, 1, 0, seed=0).classnames
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({names[0]: ["one."], names[1]: ["two."], names[2]: []}))
    config = aape_base2new.get_config("runlocal")
    config.prompts.fallback_to_templates = True
    prompts = train.class_prompts(config, "synthetic", names, str(tmp_path), str(path))
    assert prompts[0] == ["one."] and len(prompts[2]) == 80 and names[2] in prompts[2][0]


# ------------------------------------------------------------------ item 8: damaged checkpoints and draws


def _truncate(path: pathlib.Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)


def test_damaged_latest_checkpoint_falls_back_and_is_kept(tmp_path, clip_dir, absl_log):
    workdir = _make_workdir(tmp_path, clip_dir, steps=(3, 6, 9))
    step9 = workdir / "checkpoints" / "9"
    damaged = step9 / "state" / "manifest.ocdbt"
    _truncate(damaged)
    snapshot = {p: p.read_bytes() for p in step9.rglob("*") if p.is_file()}

    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    abstract = {"step": jnp.asarray(0, jnp.int32), "params": AAPEClassifier.load(workdir).params}  # loads 6 too
    state, meta = ckpt.restore(abstract)
    assert meta == {"history": [{"epoch": 6}]} and int(state["step"]) == 6
    warned = _warnings(absl_log)
    assert "step 9" in warned and str(damaged) in warned
    assert "tensorstore_spec" not in warned and "'driver'" not in warned and max(map(len, warned.splitlines())) < 800
    assert {p: p.read_bytes() for p in step9.rglob("*") if p.is_file()} == snapshot  # left in place
    # Training on saves step 9 again; the damaged one is kept beside it for inspection.
    ckpt.save(9, state, {"history": ["again"]})
    ckpt.close()
    kept = workdir / "checkpoints" / "9.damaged"
    assert {kept / p.relative_to(step9) for p in snapshot} == {p for p in kept.rglob("*") if p.is_file()}
    assert Checkpointer(workdir / "checkpoints").restore(abstract)[1] == {"history": ["again"]}


def test_unrestorable_checkpoint_error_is_short(tmp_path, clip_dir, classifier, capfd, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's, which prints (not pytest's)
    workdir = _make_workdir(tmp_path, clip_dir, steps=(3,))
    data = max((p for p in (workdir / "checkpoints" / "3").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _truncate(data)
    capfd.readouterr()
    with pytest.raises(CheckpointError) as e:
        Checkpointer(workdir / "checkpoints").restore({"step": jnp.asarray(0, jnp.int32), "params": classifier.params})
    message = str(e.value)
    assert "tensorstore_spec" not in message and "'driver'" not in message and len(message.splitlines()) == 1
    assert "step 3" in message and str(data) in message
    assert "'driver'" not in capfd.readouterr().err  # nor is TensorStore's spec printed beside it


def test_a_failed_restores_dead_reader_callbacks_are_dropped(monkeypatch):
    # When GC collects Orbax's dead readers is up to it: their callbacks' "Event loop is closed" reaches
    # sys.unraisablehook at any moment of the restore; anything else still reaches the hook before it.
    forwarded = []
    monkeypatch.setattr(sys, "unraisablehook", forwarded.append)

    def unraisable(exc):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=None)

    with checkpoint._quiet_orbax():
        sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
        assert forwarded == []
        sys.unraisablehook(unraisable(RuntimeError("something else")))
    assert [str(info.exc_value) for info in forwarded] == ["something else"]
    assert sys.unraisablehook == forwarded.append


def test_damaged_few_shot_draw_is_rebuilt_identically(tmp_path, absl_log):
    pool = synthetic.make_dataset(3, 6, 0, seed=0).train
    cache = tmp_path / "fewshot" / "draw.json"
    first = protocol.few_shot_cached(pool, 2, 5, cache)
    original = cache.read_bytes()
    cache.write_bytes(original[: len(original) // 2])
    again = protocol.few_shot_cached(pool, 2, 5, cache)
    assert again == first and cache.read_bytes() == original
    assert str(cache) in _warnings(absl_log)


# ------------------------------------------------------------------ item 9: inference errors


def test_classifier_of_another_method_is_a_clear_error(tmp_path, clip_dir):
    workdir = tmp_path / "coop"
    config = aape_base2new.get_config("runlocal")
    config.method = "coop"
    atomic.write_json(workdir / "config.json", {"config": config.to_dict(), "git": "test"})
    with pytest.raises(errors.ConfigError, match="method 'coop'"):
        AAPEClassifier.load(workdir)


def test_classifier_of_a_workdir_without_checkpoints_says_so_before_loading_clip(tmp_path):
    workdir = tmp_path / "untrained"
    config = aape_base2new.get_config("runlocal")
    config.clip = str(tmp_path / "no_such_clip")  # loading it would fail with another error
    atomic.write_json(workdir / "config.json", {"config": config.to_dict(), "git": "test"})
    with pytest.raises(CheckpointError, match=f"no checkpoint in {workdir / 'checkpoints'}"):
        AAPEClassifier.load(workdir)


def test_classifier_with_a_clip_of_another_geometry_names_both(tmp_path, workdir):
    other = tiny.write_checkpoint(tmp_path / "other", dataclasses.replace(tiny.GEOMETRIES["tiny"], projection_dim=16))
    with pytest.raises(errors.ConfigError) as e:
        AAPEClassifier.load(workdir, clip=str(other))
    message = str(e.value)
    assert "projection_dim 16" in message and "projection_dim 32" in message and str(other) in message


def test_classifier_empty_input_and_no_read_only_warning(workdir, absl_log):
    clf = AAPEClassifier.load(workdir)
    assert "read only" not in _warnings(absl_log) and "read_only" not in _warnings(absl_log)
    assert clf.predict([], ["cat", "dog"]) == []
    assert clf.predict_proba([], ["cat", "dog"]).shape == (0, 2)


# ------------------------------------------------------------------ item 10: sweep arguments


def test_sweep_extra_takes_any_string_and_config_args_pass_through(tmp_path):
    root = _fake_repo(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--root", str(root), "--runs",
                           str(tmp_path / "runs"), "--methods", "aape", "--datasets", "synthetic", "--seeds", "1",
                           "--extra", "--config.clip=/x --config.num_epochs=2", "--extra", "--config.seed_note=-1",
                           "--config-args", "runlocal,combine=feature", "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    command = [line for line in proc.stdout.splitlines() if line.startswith("cd ")][0]
    assert "experiments/aape_base2new.py:dataset=synthetic,seed=1,runlocal,combine=feature" in command
    assert "--config.clip=/x --config.num_epochs=2 --config.seed_note=-1" in command
    bad = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--root", str(root), "--runs",
                          str(tmp_path / "runs"), "--methods", "aape", "--datasets", "dtd", "--config-args", "seed=3",
                          "--dry-run"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--seeds" in bad.stderr


# ------------------------------------------------------------------ item 12: file modes


def test_created_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = fs.FeatureStore(tmp_path / "store")
        path = store.save("images", {"k": 1}, {"z": np.zeros(3, np.float32)})
        atomic.write_json(tmp_path / "w" / "config.json", {"a": 1})
        draw = tmp_path / "store" / "fewshot" / "d.json"
        protocol.few_shot_cached(synthetic.make_dataset(2, 2, 0, seed=0).train, 1, 0, draw)
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        assert mode(path) == 0o644 and mode(tmp_path / "w" / "config.json") == 0o644 and mode(draw) == 0o644
        assert mode(tmp_path / "store") == 0o755 and mode(draw.parent) == 0o755
        os.umask(0o077)  # a private umask is honoured too
        atomic.write_json(tmp_path / "private.json", {})
        assert mode(tmp_path / "private.json") == 0o600
    finally:
        os.umask(old)
