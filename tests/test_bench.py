"""The benchmarks (`aape_jax/bench/`): they run end to end in their tiny smoke mode (never timed here) and
end with their JSON line; PyTorch stays inside `aape_jax/bench/torch_reference.py`, out of every other
module of the package and out of the processes that only train or classify."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = pathlib.Path(REPO) / "aape_jax"

PIPELINE_KEYS = {"worker_scaling", "extraction_vs_torch", "encoder_busy_fraction", "decode_images_per_s_workers0",
                 "decode_images_per_s_workers1", "decode_images_per_s_workers2", "decode_images_per_s_processes2",
                 "extraction_images_per_s", "torch_extraction_images_per_s", "torch_encoder_busy_fraction"}
KEYS = {
    "towers": {"image_ratio", "text_ratio", "mfu_image", "text_equal_length_ratio"},
    "train_step": {"token_vs_torch", "feature_vs_token", "token_prefix_vs_torch"},
    "inference": {"zeroshot_cost_over_aape_c100"},
    "features": {"rerun_speedup"},
    "lm": {"prefill_vs_torch", "decode_vs_torch", "greedy_agreement"},
    "pipeline": PIPELINE_KEYS,
    "accelerator": {"towers.image_ratio", "towers.text_equal_length_ratio", "train_step.token_vs_torch",
                    "train_step.token_prefix_vs_torch", "inference.zeroshot_cost_over_aape_c100",
                    *(f"pipeline.{k}" for k in PIPELINE_KEYS)},
}
# Only the benchmarks that compare against PyTorch report its versions on their machine line.
COMPARES_WITH_TORCH = {"towers", "train_step", "lm", "pipeline", "accelerator"}


def _one_cpu_env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as a user's run
    return env


@pytest.mark.parametrize("name", sorted(KEYS))
def test_benchmark_smoke_prints_json_last(name):
    out = subprocess.run([sys.executable, "-m", "aape_jax.bench", name, "--smoke"], cwd=REPO, env=_one_cpu_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert KEYS[name] <= set(result), (name, result)
    for key in KEYS[name]:
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    assert f"== bench {name}" in out.stdout and "machine:" in out.stdout
    machine = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("machine:")).split(":", 1)[1])
    assert ("torch" in machine) == (name in COMPARES_WITH_TORCH), machine
    if name == "pipeline":
        _check_pipeline_result(result)
    if name == "accelerator":
        assert result["dtype"] == "bfloat16", result
        _check_pipeline_result({k.split(".", 1)[1]: v for k, v in result.items() if k.startswith("pipeline.")})


def _check_pipeline_result(result):
    """The headline figures agree with the measurements reported beside them."""
    assert 0 < result["encoder_busy_fraction"] <= 1 and 0 < result["torch_encoder_busy_fraction"] <= 1, result
    assert result["encoder_busy_fraction"] == pytest.approx(result["encoder_busy_s"] / result["extraction_s"],
                                                            rel=2e-3), result
    assert result["extraction_images_per_s"] == pytest.approx(result["images"] / result["extraction_s"],
                                                              rel=2e-3), result
    assert result["worker_scaling"] == pytest.approx(
        result["decode_images_per_s_workers2"] / result["decode_images_per_s_workers1"], rel=2e-3), result
    assert result["extraction_vs_torch"] == pytest.approx(
        result["extraction_images_per_s"] / result["torch_extraction_images_per_s"], rel=2e-3), result


def test_pipeline_ratios():
    from aape_jax import bench

    assert bench.pipeline_ratios({0: 90.0, 1: 100.0, 2: 150.0}, ours_ips=30.0, torch_ips=10.0, busy_s=1.0,
                                 total_s=4.0) == {"worker_scaling": 1.5, "extraction_vs_torch": 3.0,
                                                  "encoder_busy_fraction": 0.25}


def test_busy_encoder_counts_the_time_inside_its_calls():
    import time

    import numpy as np

    from aape_jax import bench

    def encode(x):
        time.sleep(0.02)
        return x[:, :1]

    enc = bench.BusyEncoder(encode)
    enc(np.zeros((2, 3)))
    enc.reset()
    t0 = time.perf_counter()
    for _ in range(2):
        out = enc(np.ones((2, 3)))
        time.sleep(0.02)  # outside the calls: not counted
    total = time.perf_counter() - t0
    assert enc.calls == 2 and out.shape == (2, 1)
    assert 0.04 <= enc.busy_s < total - 0.03, (enc.busy_s, total)


def test_synthetic_photos_are_deterministic_jpegs_of_the_asked_sizes(tmp_path):
    import PIL.Image

    from aape_jax import bench

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = bench.write_photos(str(tmp_path / "a"), 4, seed=3, long_side=(60, 90))
    again = bench.write_photos(str(tmp_path / "b"), 4, seed=3, long_side=(60, 90))
    assert [pathlib.Path(f).read_bytes() for f in files] == [pathlib.Path(f).read_bytes() for f in again]
    for f in files:
        with PIL.Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and 60 <= max(im.size) <= 90, (f, im.size)
            assert 1 <= max(im.size) / min(im.size) <= 2.01


def test_accelerator_results_are_prefixed_by_benchmark():
    from aape_jax import bench

    assert bench.prefixed({"towers": {"image_ratio": 1.5}, "pipeline": {"encoder_busy_fraction": 0.9}}) == {
        "towers.image_ratio": 1.5, "pipeline.encoder_busy_fraction": 0.9}


def test_accelerator_refuses_a_cpu_without_smoke(capsys):
    import jax

    from aape_jax import bench

    assert jax.default_backend() == "cpu"
    with pytest.raises(SystemExit) as e:
        bench.main(["accelerator"])
    assert e.value.code == 2
    assert "GPU or TPU" in capsys.readouterr().err


def test_layout():
    """A subpackage: entry point and JAX side, and the PyTorch side in its own module; no old bench.py."""
    assert not (PACKAGE / "bench.py").exists()
    for name in ("__init__.py", "__main__.py", "torch_reference.py"):
        assert (PACKAGE / "bench" / name).is_file(), name


# Modules a training or classifying process imports; `aape_jax.bench` itself loads torch only inside
# the benchmarks that compare against it.
TORCH_FREE_MODULES = ("aape_jax", "aape_jax.main", "aape_jax.train", "aape_jax.inference",
                      "aape_jax.retrieval.train", "aape_jax.lm", "aape_jax.lm.tiny", "aape_jax.bench")


def test_package_imports_leave_torch_and_transformers_unloaded():
    script = textwrap.dedent(f"""
        import importlib, json, sys
        loaded = {{}}
        for name in {TORCH_FREE_MODULES!r}:
            importlib.import_module(name)
            loaded[name] = sorted(m for m in ("torch", "transformers", "aape_jax.bench.torch_reference")
                                  if m in sys.modules)
        print(json.dumps(loaded))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_one_cpu_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {name: [] for name in TORCH_FREE_MODULES}, loaded


_TORCH_IMPORT = re.compile(r"^([ \t]*)(?:import|from)\s+(torch|transformers)\b", re.MULTILINE)
# Files that need torch/transformers for a reason of their own, imported lazily inside the one function
# that needs them (an indented import; a top-level one still fails below):
LAZY_TORCH_ALLOWED = {
    "aape_jax/hf_weights.py",  # reading a PyTorch-pickled pytorch_model.bin needs torch.load
    "aape_jax/prompts/generate.py",  # generating class descriptions with a local transformers causal LM
}


def test_no_torch_outside_the_bench_subpackage():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("aape_jax/bench/"):
            continue
        text = path.read_text(encoding="utf-8")
        assert "torch_reference" not in text, f"{rel} mentions aape_jax.bench.torch_reference"
        for m in _TORCH_IMPORT.finditer(text):
            top_level = not m.group(1)
            if rel not in LAZY_TORCH_ALLOWED or top_level:
                found.setdefault(rel, []).append(m.group(0).strip())
    assert not found, f"torch/transformers imported outside aape_jax/bench/: {found}"


def test_missing_vocabulary_is_a_clear_error_before_any_work(monkeypatch, capsys, tmp_path):
    from aape_jax import bench, toyworld

    def never(*args, **kwargs):
        raise AssertionError("a benchmark started without the vocabulary")

    monkeypatch.setitem(bench.BENCHMARKS, "towers", never)
    monkeypatch.setattr(bench, "write_checkpoint", never)

    def nothing_found():
        raise FileNotFoundError("looked in /nowhere")

    monkeypatch.setattr(toyworld, "default_tokenizer_dir", nothing_found)
    with pytest.raises(SystemExit) as e:
        bench.main(["towers"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--tokenizer_dir" in err and "AAPE_CLIP_TOKENIZER_DIR" in err, err

    with pytest.raises(SystemExit):
        bench.main(["towers", "--tokenizer_dir", str(tmp_path)])  # exists, but holds no vocab.json
    err = capsys.readouterr().err
    assert "--tokenizer_dir" in err and "vocab.json" in err, err


def test_default_vocabulary_is_the_toyworld_search(monkeypatch, tmp_path):
    from aape_jax import bench

    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setenv("AAPE_CLIP_TOKENIZER_DIR", str(tmp_path))
    seen = []
    monkeypatch.setitem(bench.BENCHMARKS, "towers", lambda args: seen.append(args.tokenizer_dir))
    bench.main(["towers"])
    assert seen == [str(tmp_path)]
