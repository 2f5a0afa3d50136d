"""Workdirs in a bucket (gs://, a storage emulator on loopback): results collection, the error log,
the sweep, and the launch scripts' path checks."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess

import pytest

from aape_jax import errors, results, storage
from test_results import write_run, write_runs
from test_storage_data import upload
from test_sweep import calls, make_repo, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/aape_base2new.py:runlocal"


@pytest.fixture
def runs(tmp_path: pathlib.Path) -> pathlib.Path:
    """test_results' runs, plus one named only by its path, a truncated and a partial one, a feature store."""
    root = write_runs(tmp_path / "runs")
    write_run(root, "kgcoop", "dtd", 1, 80.0, 60.0, 68.57, config=False)  # identity from the path
    (root / "aape" / "dtd" / "seed4").mkdir()
    (root / "aape" / "dtd" / "seed4" / "metrics.json").write_text('{"base_acc": 80.0, "new_')
    (root / "coop" / "dtd" / "seed5").mkdir()
    (root / "coop" / "dtd" / "seed5" / "metrics.json").write_text('{"base_acc": 80.0}')
    (root / "feature_store" / "x").mkdir(parents=True)
    (root / "feature_store" / "x" / "metrics.json").write_text("garbage")  # never walked
    return root


def test_results_from_a_bucket_equal_the_local_ones(runs, tmp_path, gcs_dir, capsys):
    upload(runs, gcs_dir)
    assert results.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    local_err = capsys.readouterr().err
    assert results.main([gcs_dir]) == 0  # --out defaults to the runs folder: the bucket
    remote_out, remote_err = capsys.readouterr()
    out = storage.path(gcs_dir)
    for name in ("results.md", "results.csv"):
        assert (out / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
    assert remote_out == (out / "results.md").read_text()
    assert "kgcoop Base" in remote_out  # the run named only by its <method>/<dataset>/seed<S> path
    # The same warnings, naming the bucket's objects.
    assert local_err.count("skipping") == remote_err.count("skipping") == 2
    assert f"skipping {gcs_dir}/aape/dtd/seed4/metrics.json: unreadable" in remote_err
    assert f"skipping {gcs_dir}/coop/dtd/seed5/metrics.json: partial" in remote_err
    assert "feature_store" not in remote_err
    if (tmp_path / "out" / "h_per_dataset.png").exists():  # matplotlib installed
        assert (out / "h_per_dataset.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Local runs, results into another bucket folder.
    assert results.main([str(runs), "--out", f"{gcs_dir}/table"]) == 0
    assert (out / "table" / "results.csv").read_bytes() == (tmp_path / "out" / "results.csv").read_bytes()


def test_results_bucket_errors_are_one_line(runs, gcs_dir, capsys):
    with pytest.raises(SystemExit) as e:
        results.main([f"{gcs_dir}/nothing-here"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert results.main([str(runs), "--out", "gs://no-such-bucket/out"]) == 2
    err = capsys.readouterr().err
    assert "bucket gs://no-such-bucket does not exist" in err and "Traceback" not in err


def test_error_log_in_a_bucket_is_appended_to(gcs_dir):
    log = f"{gcs_dir}/run/error.log"
    assert errors.append_to_log(log, "first traceback\n")
    assert errors.append_to_log(log, "second traceback\n")
    assert storage.path(log).read_text() == "first traceback\nsecond traceback\n"
    assert not errors.append_to_log("gs://no-such-bucket/error.log", "lost\n")  # cannot write: False, no raise
    stream = io.StringIO()
    assert errors.report(errors.ConfigError("bad value"), log_file=log, stream=stream) == errors.USER_ERROR_EXIT_CODE
    assert f"the full traceback is in {log}" in stream.getvalue()
    text = storage.path(log).read_text()
    assert text.startswith("first traceback\nsecond traceback\n") and "ConfigError: bad value" in text


def test_sweep_with_a_bucket_root(tmp_path, gcs_dir):
    repo = make_repo(tmp_path)
    runs = storage.path(gcs_dir)
    finished = {"base_acc": 1.0, "new_acc": 2.0, "harmonic_mean": 1.3}
    (runs / "aape/dtd/seed1/metrics.json").write_text(json.dumps(finished))
    (runs / "aape/dtd/seed3/checkpoints/100/state").write_bytes(b"x")
    args = ("--methods", "aape", "--datasets", "dtd", "--seeds", "1,2,3")
    dry = sweep(repo, gcs_dir, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "[sweep] skip aape/dtd/seed1" in dry.stdout and "3 runs, 1 finished, 2 to go" in dry.stdout
    assert "[sweep] run aape/dtd/seed2" in dry.stdout and "[sweep] resume aape/dtd/seed3" in dry.stdout
    assert f"--workdir {gcs_dir}/aape/dtd/seed2 --config.feature_store={gcs_dir}/feature_store" in dry.stdout

    # Two at a time: each run's output is appended to its sweep.log object when it ends.
    for _ in range(2):
        result = sweep(repo, gcs_dir, "--methods", "aape", "--datasets", "dtd,fail", "--seeds", "2", "--jobs", "2")
        assert result.returncode == 1, result.stdout + result.stderr
    assert [c["argv"][c["argv"].index("--workdir") + 1] for c in calls(repo)].count(f"{gcs_dir}/aape/fail/seed2") == 2
    assert (runs / "aape/dtd/seed2/metrics.json").is_file()
    assert (runs / "aape/dtd/seed2/sweep.log").read_text().count("stub running") == 1  # finished: not rerun
    assert (runs / "aape/fail/seed2/sweep.log").read_text().count("stub running") == 2  # appended to

    started = len(calls(repo))
    missing = sweep(repo, "gs://no-such-bucket/runs", *args)
    assert missing.returncode == 2 and "bucket gs://no-such-bucket does not exist" in missing.stderr
    assert len(calls(repo)) == started  # checked before any run starts


# ---------------------------------------------------------------- launch scripts (no bucket needed)


def bash(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DRY_RUN", "EXTRA_FLAGS", "TPU_"))}
    return subprocess.run(["bash", *args], cwd=ROOT, env={**environment, **env}, capture_output=True, text=True,
                          timeout=30)


def test_launch_accepts_gs_workdir_and_feature_store():
    result = bash("launch/gpu_single_host.sh", "--dry-run", "--", "--config.feature_store", "gs://my-bucket/fs",
                  CONFIG=CONFIG, WORKDIR="gs://my-bucket/runs/seed1",
                  EXTRA_FLAGS="--config.feature_store=gs://b.x_y-1/f")
    assert result.returncode == 0, result.stderr
    assert (f"+ python -m aape_jax.main --config {CONFIG} --workdir gs://my-bucket/runs/seed1 "
            "--config.feature_store=gs://b.x_y-1/f --config.feature_store gs://my-bucket/fs") in result.stdout
    result = bash("launch/tpu_pod.sh", "--dry-run", "run", TPU_NAME="pod", ZONE="us-central2-b", CONFIG=CONFIG,
                  WORKDIR="gs://my-bucket/runs/seed1")
    assert result.returncode == 0, result.stderr
    assert "--workdir gs://my-bucket/runs/seed1" in result.stdout
    for local in ("runs/a", "/abs/path", "./gs/x", "my:dir"):
        assert bash("-c", f"source launch/common.sh; check_workdir {local}; echo ok").stdout == "ok\n", local
    assert not (ROOT / "gs:").exists()


@pytest.mark.parametrize("value,reason", [
    ("s3://bucket/run", "unsupported location"),
    ("http://host/run", "unsupported location"),
    ("gs:/bucket/run", "unsupported location"),
    ("gs:bucket/run", "unsupported location"),
    ("gs://", "not a valid Cloud Storage path"),
    ("gs:///run", "not a valid Cloud Storage path"),
    ("gs://My_Bucket/run", "not a valid Cloud Storage path"),
    ("gs://ab/run", "not a valid Cloud Storage path"),
])
def test_launch_rejects_other_schemes_and_malformed_gs(value, reason):
    result = bash("launch/gpu_single_host.sh", "--dry-run", CONFIG=CONFIG, WORKDIR=value)
    assert result.returncode != 0 and f"error: WORKDIR={value}: {reason}" in result.stderr
    assert "gs://BUCKET/FOLDER" in result.stderr
    result = bash("launch/gpu_single_host.sh", "--dry-run", "--", f"--config.feature_store={value}",
                  CONFIG=CONFIG, WORKDIR="gs://my-bucket/run")
    assert result.returncode != 0 and f"error: --config.feature_store={value}: {reason}" in result.stderr
    # slurm_submit.sh checks EXTRA_FLAGS before submitting (the batch script would, on the nodes).
    result = bash("launch/slurm_submit.sh", "--dry-run", CONFIG=CONFIG, WORKDIR="/shared/run",
                  EXTRA_FLAGS=f"--config.seed=2 --config.feature_store {value}")
    assert result.returncode != 0 and f"error: --config.feature_store={value}: {reason}" in result.stderr
