"""Issue 11 ("Nothing lost, nothing silent"), items 2, 4 and 7: config drift on resume, up-front
config validation (and num_epochs=0), Ctrl-C during training.

Tiny random CLIPs (`runlocal`); a 3-epoch workdir trained once per module and copied per test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from aape_jax import config_check, distributed, train
from aape_jax.errors import ConfigError
from test_end_to_end import (_LONG, _TWO_DEVICES, REPO, STOP_AFTER, _assert_same_run, _config,  # noqa: F401
                             _interrupt, _main)

EPOCHS = 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory, store):
    workdir = tmp_path_factory.mktemp("finished")
    return workdir, train.train_and_evaluate(_config(store, num_epochs=EPOCHS), str(workdir))


@pytest.fixture
def workdir(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


@pytest.fixture
def no_work(monkeypatch):
    """Makes loading CLIP or encoding images fail the test: what is checked must be checked before."""

    def work_started(*args, **kwargs):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(train, "load_clip", work_started)
    monkeypatch.setattr(train, "image_features", work_started)
    return monkeypatch


def _read(path):
    return json.loads(path.read_text())


# ------------------------------------------------------------------ item 2: config drift on resume


@pytest.mark.parametrize("overrides, change", [
    ({"optim.learning_rate": 0.5}, "config.optim.learning_rate: 0.05 -> 0.5"),
    ({"batch_size": 16}, "config.batch_size: 32 -> 16"),
    ({"method": "coop"}, "config.method: 'aape' -> 'coop'"),
])
def test_changed_config_stops_before_any_work_with_a_diff(workdir, store, no_work, overrides, change):
    before = {name: (workdir / name).read_bytes() for name in ("config.json", "metrics.json")}
    with pytest.raises(config_check.ConfigDriftError) as e:
        train.train_and_evaluate(_config(store, num_epochs=EPOCHS, **overrides), str(workdir))
    first_line = str(e.value).splitlines()[0]  # what the CLI prints
    assert change in first_line and str(workdir) in first_line
    assert len(e.value.changes) == 1
    assert "--workdir" in e.value.hint and "--config.resume_with_changes=true" in e.value.hint
    assert {name: (workdir / name).read_bytes() for name in before} == before


def test_output_only_change_resumes_silently(finished, workdir, store):
    fields = {"log_every_steps": 1, "eval_batch_size": 8, "checkpoint_keep": 5, "report_zeroshot": True,
              "model.text_memory_gb": 0.5}
    metrics = train.train_and_evaluate(_config(store, num_epochs=EPOCHS, **fields), str(workdir))
    for key in ("base_acc", "new_acc", "train_loss"):
        assert metrics[key] == finished[1][key]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    recorded = _read(workdir / "config.json")
    assert recorded["config"]["log_every_steps"] == 1 and recorded["history"] == []
    assert "config_changes" not in metrics


def test_resume_with_changes_proceeds_and_records_the_change(finished, workdir, store):
    steps = config_check.latest_checkpoint_step(str(workdir))
    changed = {"optim.learning_rate": 0.5, "num_epochs": EPOCHS + 1}
    metrics = train.train_and_evaluate(_config(store, resume_with_changes=True, **changed), str(workdir))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][:3] == finished[1]["history"]  # resumed, not retrained
    recorded = _read(workdir / "config.json")
    assert recorded["config"]["optim"]["learning_rate"] == 0.5
    (entry,) = recorded["history"]
    assert entry["changes"] == {"optim.learning_rate": [0.05, 0.5], "num_epochs": [EPOCHS, EPOCHS + 1]}
    assert entry["resumed_from_step"] == steps
    assert metrics["config_changes"] == recorded["history"]
    # The workdir now records the new config: the same command resumes without the switch.
    again = train.train_and_evaluate(_config(store, **changed), str(workdir))
    assert again["history"] == metrics["history"] and again["base_acc"] == metrics["base_acc"]
    assert len(_read(workdir / "config.json")["history"]) == 1


def test_resume_with_a_changed_batch_size_keeps_counting_epochs(workdir, store):
    steps = config_check.latest_checkpoint_step(str(workdir))
    metrics = train.train_and_evaluate(_config(store, batch_size=16, num_epochs=EPOCHS + 1, resume_with_changes=True),
                                       str(workdir))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]  # not [1, 2, 3, 2, 3, 4]
    assert config_check.latest_checkpoint_step(str(workdir)) == steps + 80 // 16  # one more epoch of batch 16


def test_cli_prints_the_diff_and_exits_2(workdir, store):
    before = (workdir / "config.json").read_bytes()
    proc = subprocess.run(_main(workdir, store, f"--config.num_epochs={EPOCHS}", "--config.optim.learning_rate=0.5"),
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.optim.learning_rate: 0.05 -> 0.5" in proc.stderr and "resume_with_changes" in proc.stderr
    assert "resuming from step" not in proc.stderr and "Traceback" not in proc.stderr
    assert (workdir / "config.json").read_bytes() == before


# ------------------------------------------------------------------ item 4: validation up front


BAD_VALUES = [
    ("batch_size", -4), ("batch_size", 0), ("batch_size", 12),  # 12: not divisible by the 8 devices
    ("num_epochs", -1), ("dataset.shots", 0), ("dataset.num_views", 0), ("seed", -1),
    ("optim.learning_rate", 0.0), ("optim.learning_rate", -0.1), ("optim.learning_rate", float("nan")),
    ("optim.warmup_epochs", -1), ("optim.momentum", 1.5), ("optim.weight_decay", -1e-4),
    ("loss.distill_weight", -1.0), ("loss.aggregator_weight", -0.5), ("baseline.kg_weight", -8.0),
    ("eval_batch_size", 0), ("checkpoint_keep", 0), ("checkpoint_every_epochs", 0),
    ("prompts.max_per_class", -1), ("num_devices", 9), ("model.num_heads", 0),
    ("method", "prompt_magic"), ("model.combine", "concat"), ("model.aggregator", "max"),
    ("model.token_position", "middle"), ("model.text_memory_gb", 0.0), ("optim.name", "adam"), ("protocol", "zero"),
    ("parallelism", "vmap"), ("evaluate_split", "train"), ("dataset.source", "zip"),
    ("random_clip_geometry", "huge"),
]


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=[f"{f}={v}" for f, v in BAD_VALUES])
def test_bad_value_is_a_config_error_naming_the_field(store, tmp_path, no_work, field, value):
    workdir = tmp_path / "w"
    with pytest.raises(ConfigError, match=re.escape(f"config.{field} is {value!r}")):
        train.train_and_evaluate(_config(store, **{field: value}), str(workdir))
    assert not workdir.exists()  # not even config.json


def test_every_bad_field_is_named_at_once(store, tmp_path, no_work):
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(_config(store, batch_size=0, num_epochs=-2, **{"optim.learning_rate": -1.0}),
                                 str(tmp_path))
    for name in ("config.batch_size is 0", "config.num_epochs is -2", "config.optim.learning_rate is -1.0"):
        assert name in str(e.value)


def test_prompt_file_required_for_a_real_dataset(store, tmp_path, no_work):
    with pytest.raises(ConfigError, match=r"config\.prompts\.path is ''.*'dtd'"):
        train.train_and_evaluate(_config(store, **{"dataset.name": "dtd"}), str(tmp_path))


def test_cli_num_epochs_0_evaluates_and_bad_values_exit_2(store, tmp_path):
    workdir = tmp_path / "eval_only"
    proc = subprocess.run(_main(workdir, store, "--config.num_epochs=0"), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inference demo skipped" in proc.stdout
    metrics = _read(workdir / "metrics.json")
    assert metrics["history"] == [] and metrics["train_loss"] is None and 0 <= metrics["harmonic_mean"] <= 100
    assert not (workdir / "checkpoints").exists()  # nothing trained, no training features needed
    bad = tmp_path / "bad"
    proc = subprocess.run(_main(bad, store, "--config.batch_size=-4"), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "config.batch_size is -4 (must be an integer >= 1)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (bad / "checkpoints").exists() and not (bad / "config.json").exists()


def test_num_epochs_0_evaluates_the_checkpoint_of_a_trained_workdir(finished, workdir, store):
    metrics = train.train_and_evaluate(_config(store, num_epochs=0, resume_with_changes=True), str(workdir))
    for key in ("base_acc", "new_acc", "train_loss", "history"):
        assert metrics[key] == finished[1][key]


# ------------------------------------------------------------------ item 7: Ctrl-C


def test_first_ctrl_c_requests_a_stop_second_aborts():
    previous = signal.getsignal(signal.SIGINT)
    with distributed.PreemptionWatcher() as watcher:
        assert not watcher.should_stop()
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode boundary, here
        assert watcher.should_stop() and watcher.exit_code == distributed.INTERRUPTED_EXIT_CODE == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # give the handler its boundary
                pass
    assert signal.getsignal(signal.SIGINT) is previous
    with distributed.PreemptionWatcher() as watcher:
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.should_stop() and watcher.exit_code == distributed.PREEMPTED_EXIT_CODE


def test_sigint_checkpoints_exits_130_and_resumes(uninterrupted, store, tmp_path):  # noqa: F811
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        assert _interrupt(tmp_path, store, signal.SIGINT, stderr) == distributed.INTERRUPTED_EXIT_CODE
    assert not (tmp_path / "metrics.json").exists()
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert STOP_AFTER <= steps[-1] < 32
    # Saved at the step boundary after the signal (not just the last epoch's checkpoint left behind).
    saved = re.findall(r"interrupted \(Ctrl-C\): saved step (\d+)", log.read_text())
    assert saved and int(saved[-1]) == steps[-1], log.read_text()[-3000:]
    subprocess.run(_main(tmp_path, store, *_LONG), cwd=REPO, env=_TWO_DEVICES, check=True, capture_output=True)
    _assert_same_run(uninterrupted, _read(tmp_path / "metrics.json"))
