"""Two processes over loopback (gloo), 4 simulated devices each == one process with 8 devices: sharing a
local disk, or (issue 13) each with its own disk and a bucket on a storage emulator as the only shared storage."""

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(workdir, store, *extra):
    # 3 epochs (6 steps) are enough to compare the two losses and to checkpoint from both processes.
    return [sys.executable, "-m", "aape_jax.main", "--config", "experiments/aape_base2new.py:runlocal",
            f"--config.feature_store={store}", f"--workdir={workdir}", "--config.num_epochs=3", *extra]


def _env(devices):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """metrics.json of the run with one process and 8 devices."""
    root = tmp_path_factory.mktemp("single")
    subprocess.run(_cmd(root / "run", root / "store"), cwd=REPO, env=_env(8), check=True, capture_output=True)
    return json.load(open(root / "run" / "metrics.json"))


def _two_processes(workdir, store, env=lambda i: _env(4)) -> list[str]:
    """Runs the config as two processes over loopback (process i with `env(i)`); their outputs."""
    port = _free_port()
    procs = [subprocess.Popen(_cmd(workdir, store, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                   f"--process_id={i}"),
                              cwd=REPO, env=env(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
    return outputs


def test_two_processes_match_one(single, tmp_path):
    outputs = _two_processes(tmp_path / "multi", tmp_path / "store2")
    multi = json.load(open(tmp_path / "multi" / "metrics.json"))
    assert single["num_devices"] == multi["num_devices"] == 8
    assert multi["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)
    # Process 0 alone writes summaries and metrics; the image features were computed in two parts, merged once.
    assert "base_acc=" in outputs[0] and "base_acc=" not in outputs[1]
    store_files = os.listdir(tmp_path / "store2")
    assert not [f for f in store_files if "_part" in f]
    assert len([f for f in store_files if f.startswith("images-")]) == 3


def test_two_processes_sharing_only_a_bucket_match_one(single, gcs_dir, tmp_path):
    """Each process with its own local disk (home, temp and cache folders); the bucket is all they share."""
    from aape_jax import storage

    def own_disk(i):
        home = tmp_path / f"host{i}"
        (home / "tmp").mkdir(parents=True)
        return dict(_env(4), HOME=str(home), TMPDIR=str(home / "tmp"), AAPE_CACHE_DIR=str(home / "cache"))

    _two_processes(f"{gcs_dir}/multi", f"{gcs_dir}/store", own_disk)
    multi = json.loads(storage.read_text(f"{gcs_dir}/multi/metrics.json"))
    assert multi["num_devices"] == 8
    assert multi["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)
    # Each process wrote its share of the image features to the bucket; process 0 merged them once.
    entries = [p.name for p in storage.path(f"{gcs_dir}/store").iterdir()]
    assert not [n for n in entries if "_part" in n or n.endswith(".partial")]
    assert len([n for n in entries if n.startswith("images-")]) == 3
    for i in range(2):  # what each process kept on its own disk: its copy of the random CLIP, nothing else
        assert sorted(os.listdir(tmp_path / f"host{i}" / "cache")) == ["random_clip"]
