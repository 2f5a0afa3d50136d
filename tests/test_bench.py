"""The benchmarks run end to end in their tiny smoke mode (never timed here) and end with their JSON line."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KEYS = {
    "towers": {"image_ratio", "text_ratio", "mfu_image"},
    "train_step": {"token_vs_torch", "feature_vs_token"},
    "inference": {"zeroshot_cost_over_aape_c100"},
    "features": {"rerun_speedup"},
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_benchmark_smoke_prints_json_last(name):
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as a user's run
    out = subprocess.run([sys.executable, "-m", "aape_jax.bench", name, "--smoke"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert KEYS[name] <= set(result), (name, result)
    for key in KEYS[name]:
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    assert f"== bench {name}" in out.stdout and "machine:" in out.stdout
