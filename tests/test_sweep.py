"""launch/sweep.py against a stub entry module (it writes metrics.json, fails, or exits 75 as its
dataset name says), so nothing here trains: dry runs, skip/resume, failures, preemption, SIGTERM."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "launch" / "sweep.py"
PREEMPTED = 75

STUB = r'''
"""Stub of aape_jax.main: records its argv; behaves as its dataset name says."""
import json, os, signal, sys, time
from aape_jax import storage  # a gs:// workdir goes to the bucket (tests/test_storage_results.py)

argv = sys.argv[1:]
config = argv[argv.index("--config") + 1]
workdir = argv[argv.index("--workdir") + 1]
args = dict(item.split("=") for item in config.split(":", 1)[1].split(","))
with open(os.environ["SWEEP_STUB_LOG"], "a") as f:
    f.write(json.dumps({"cwd": os.getcwd(), "argv": argv}) + "\n")
dataset = args["dataset"]
print(f"stub running {config}", flush=True)
if dataset == "fail":
    sys.exit(1)
if dataset == "preempt":
    sys.exit(75)
if dataset == "wait":  # wait for SIGTERM, then exit as a preempted run does
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
    open(os.path.join(os.environ["SWEEP_STUB_READY"]), "w").close()
    time.sleep(60)
    sys.exit(3)
out = storage.path(workdir)
out.mkdir(parents=True, exist_ok=True)
if dataset != "nometrics":
    (out / "metrics.json").write_text(
        json.dumps({"base_acc": 80.0, "new_acc": 60.0, "harmonic_mean": 68.57, "train_loss": 0.1}))
'''


def make_repo(tmp_path: pathlib.Path) -> pathlib.Path:
    """A fake repository root: two method configs and the stub entry module."""
    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    for method in ("aape", "coop"):
        (root / "experiments" / f"{method}_base2new.py").write_text("def get_config(arg=''): ...\n")
    (root / "stub_main.py").write_text(STUB)
    return root


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_repo(tmp_path)


def stub_env(repo: pathlib.Path, **extra: str) -> dict[str, str]:
    """The environment of a sweep whose stub runs log to REPO/calls.jsonl and import aape_jax from here."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "SWEEP_STUB_LOG": str(repo / "calls.jsonl"), "PYTHONPATH": path, **extra}


def sweep(repo: pathlib.Path, runs: pathlib.Path | str, *args: str, stub: bool = True, **kwargs):
    cmd = [sys.executable, str(SWEEP), "--root", str(repo), "--runs", str(runs), *args]
    if stub:
        cmd += ["--entry", "stub_main"]
    return subprocess.run(cmd, capture_output=True, text=True, env=stub_env(repo), timeout=60, **kwargs)


def calls(repo: pathlib.Path) -> list[dict]:
    log = repo / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def expected_command(runs: pathlib.Path, method: str, dataset: str, seed: int, shots: str = "",
                     extra: tuple[str, ...] = (), entry: str = "aape_jax.main") -> list[str]:
    return [sys.executable, "-m", entry, "--config",
            f"experiments/{method}_base2new.py:dataset={dataset},seed={seed}{shots}",
            "--workdir", str(runs / method / dataset / f"seed{seed}"), *extra,
            f"--config.feature_store={runs / 'feature_store'}"]


def test_dry_run_prints_the_commands(repo: pathlib.Path, tmp_path: pathlib.Path):
    runs = tmp_path / "runs"
    result = sweep(repo, runs, "--methods", "aape,coop", "--datasets", "caltech101,dtd", "--seeds", "1,2",
                   "--shots", "16", "--extra", "--config.clip=/ckpt --config.dataset.root='/data dir'",
                   "--dry-run", stub=False)
    assert result.returncode == 0, result.stderr
    commands = [line.split(" && ", 1)[1] for line in result.stdout.splitlines() if line.startswith("cd ")]
    import shlex

    assert [shlex.split(c) for c in commands] == [
        expected_command(runs, m, d, s, ",shots=16", ("--config.clip=/ckpt", "--config.dataset.root=/data dir"))
        for m in ("aape", "coop") for d in ("caltech101", "dtd") for s in (1, 2)]
    assert "8 runs, 0 finished, 8 to go" in result.stdout
    assert not runs.exists() and not calls(repo)  # nothing ran, nothing written


def test_skip_finished_and_resume_checkpointed(repo: pathlib.Path, tmp_path: pathlib.Path):
    runs = tmp_path / "runs"
    done = runs / "aape" / "dtd" / "seed1"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"base_acc": 1.0, "new_acc": 2.0, "harmonic_mean": 1.3}))
    partial = runs / "aape" / "dtd" / "seed2"  # unparsable metrics: run again
    partial.mkdir(parents=True)
    (partial / "metrics.json").write_text('{"base_acc": 1.0, ')
    checkpointed = runs / "aape" / "dtd" / "seed3"
    (checkpointed / "checkpoints" / "100").mkdir(parents=True)
    result = sweep(repo, runs, "--methods", "aape", "--datasets", "dtd", "--seeds", "1,2,3", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[sweep] skip aape/dtd/seed1" in out
    assert "[sweep] run aape/dtd/seed2" in out and "[sweep] resume aape/dtd/seed3" in out
    assert "3 runs, 1 finished, 2 to go" in out
    assert "--workdir " + str(done) + " " not in out

    result = sweep(repo, runs, "--methods", "aape", "--datasets", "dtd", "--seeds", "1,2,3")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = [c["argv"][c["argv"].index("--workdir") + 1] for c in calls(repo)]
    assert ran == [str(partial), str(checkpointed)]  # the same command for the checkpointed run: it resumes
    assert all(c["cwd"] == str(repo) for c in calls(repo))
    assert json.loads((done / "metrics.json").read_text())["base_acc"] == 1.0  # untouched


def test_missing_method_config_fails_before_anything(repo: pathlib.Path, tmp_path: pathlib.Path):
    result = sweep(repo, tmp_path / "runs", "--methods", "aape,cocoop,nope", "--datasets", "dtd")
    assert result.returncode == 2
    assert "no config for method(s) cocoop" in result.stderr and "nope" in result.stderr
    assert "cocoop_base2new.py does not exist" in result.stderr
    assert not calls(repo) and not (tmp_path / "runs").exists()


def test_failures_are_logged_the_rest_runs_and_exit_is_nonzero(repo: pathlib.Path, tmp_path: pathlib.Path):
    runs = tmp_path / "runs"
    result = sweep(repo, runs, "--methods", "aape,coop", "--datasets", "dtd,fail,nometrics,eurosat", "--seeds", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(calls(repo)) == 8  # every run went, failures included
    for method in ("aape", "coop"):
        for dataset in ("dtd", "eurosat"):
            assert (runs / method / dataset / "seed1" / "metrics.json").exists()
    out = result.stdout
    assert "FAILED aape/fail/seed1 (exit 1)" in out
    assert "FAILED coop/nometrics/seed1 (exit 0 but no usable metrics.json)" in out
    tail = out[out.index("failed runs:"):]
    for name in ("aape/fail/seed1", "aape/nometrics/seed1", "coop/fail/seed1", "coop/nometrics/seed1"):
        assert name in tail
    assert "4 finished this time, 4 failed" in out

    # Again: the finished ones are skipped, the failed ones retried.
    calls_before = len(calls(repo))
    again = sweep(repo, runs, "--methods", "aape,coop", "--datasets", "dtd,fail,nometrics,eurosat", "--seeds", "1")
    assert again.returncode == 1
    assert again.stdout.count("[sweep] skip") == 4 and len(calls(repo)) == calls_before + 4


def test_preemption_stops_the_sweep_with_75(repo: pathlib.Path, tmp_path: pathlib.Path):
    runs = tmp_path / "runs"
    result = sweep(repo, runs, "--methods", "aape", "--datasets", "dtd,preempt,eurosat", "--seeds", "1")
    assert result.returncode == PREEMPTED, result.stdout + result.stderr
    assert [c["argv"][1].split(":")[1] for c in calls(repo)] == ["dataset=dtd,seed=1", "dataset=preempt,seed=1"]
    assert "preempted aape/preempt/seed1" in result.stdout
    assert not (runs / "aape" / "eurosat").exists()


def test_parallel_jobs_log_to_files(repo: pathlib.Path, tmp_path: pathlib.Path):
    runs = tmp_path / "runs"
    result = sweep(repo, runs, "--methods", "aape,coop", "--datasets", "dtd,fail", "--seeds", "1,2", "--jobs", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(calls(repo)) == 8
    assert "stub running" not in result.stdout  # run output goes to WORKDIR/sweep.log with --jobs > 1
    log = (runs / "coop" / "fail" / "seed2" / "sweep.log").read_text()
    assert "stub running experiments/coop_base2new.py:dataset=fail,seed=2" in log
    assert "4 finished this time, 4 failed" in result.stdout


def test_sigterm_is_passed_on_and_ends_with_75(repo: pathlib.Path, tmp_path: pathlib.Path):
    runs = tmp_path / "runs"
    ready = tmp_path / "ready"
    env = stub_env(repo, SWEEP_STUB_READY=str(ready))
    proc = subprocess.Popen(
        [sys.executable, str(SWEEP), "--root", str(repo), "--runs", str(runs), "--entry", "stub_main",
         "--methods", "aape", "--datasets", "wait,dtd", "--seeds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True)  # its own group: only the sweep gets the signal, it must pass it on
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "stub never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED, out
    assert "passing it on to 1 running run(s)" in out
    assert len(calls(repo)) == 1  # dtd never started
