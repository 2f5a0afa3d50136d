"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""

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
