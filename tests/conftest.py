"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""

import json
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): the CPUs this process may run on, not the host's (psutil's count)."""
    return len(os.sched_getaffinity(0))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path to ../shared/data; skips (with the reason) where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI always has it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cupl_texts(shared_data: pathlib.Path) -> list[str]:
    """Every class name and LLM sentence of the CuPL prompt files in ../shared/data/cupl."""
    files = sorted((shared_data / "cupl").glob("*.json"))
    assert files, f"no CuPL files in {shared_data / 'cupl'}"
    texts: list[str] = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            prompts: dict[str, list[str]] = json.load(f)
        for classname, sentences in prompts.items():
            texts.append(classname)
            texts.extend(sentences)
    assert len(texts) > 10000
    return texts


@pytest.fixture(scope="session")
def toy_clip_dir(shared_data) -> str:
    """The toy world's pretrained CLIP: built once per machine (minutes), then read from the cache."""
    from aape_jax import toyworld

    return toyworld.pretrained_clip(str(shared_data / "clip_tokenizer"))


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> pathlib.Path:
    """A feature store the runlocal pipeline tests share (entries are keyed by what made them)."""
    return tmp_path_factory.mktemp("feature_store")


@pytest.fixture(scope="session")
def uninterrupted(store, tmp_path_factory) -> dict:
    """metrics.json of the long runlocal run the interruption tests resume to (run once per session)."""
    import json
    import subprocess

    from test_end_to_end import _LONG, _TWO_DEVICES, REPO, _main

    workdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_main(workdir, store, *_LONG), cwd=REPO, env=_TWO_DEVICES, check=True, capture_output=True)
    return json.load(open(workdir / "metrics.json"))


@pytest.fixture(scope="session")
def gcs_bucket():
    """gs://BUCKET of a Cloud Storage emulator on loopback (tests/gcs_emulator.py), for this session.

    Sets STORAGE_EMULATOR_HOST for this process and the commands it starts;
    TENSORSTORE_GCS_HTTP_URL is left for `aape_jax.storage` to derive from it.
    """
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name("gcs_emulator.py")),
                               str(port), "bucket"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the storage emulator did not start (exit {server.wait()})")
    previous = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ.pop("TENSORSTORE_GCS_HTTP_URL", None)
    try:
        yield "gs://bucket"
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def gcs_dir(gcs_bucket, request) -> str:
    """A fresh gs:// folder of the emulator's bucket for one test."""
    import uuid

    return f"{gcs_bucket}/{request.node.name.split('[')[0]}-{uuid.uuid4().hex[:8]}"
