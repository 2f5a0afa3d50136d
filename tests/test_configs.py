"""The config argument parser, and every experiments/*.py loading by path from outside the repository."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from aape_jax.configs import classification, retrieval
from aape_jax.configs.args import parse_arg

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

# Every experiment file with the arguments its docstring documents (launch commands and offline checks).
BASE2NEW = ("", "runlocal", "toyworld", "toyworld,dataset=toy_shift", "dataset=caltech101,shots=16,seed=1")
DOCUMENTED: dict[str, tuple[str, ...]] = {
    "aape_base2new": BASE2NEW + ("shots=16,seed=1,combine=token,aggregator=attention", "combine=feature"),
    "coop_base2new": BASE2NEW,
    "cocoop_base2new": BASE2NEW,
    "cupl_base2new": BASE2NEW,
    "kgcoop_base2new": BASE2NEW,
    "linear_probe_base2new": BASE2NEW,
    "zeroshot_clip_base2new": BASE2NEW + ("dataset=caltech101,shots=16,seed=1,templates=single", "templates=ensemble"),
    "aape_fewshot": ("", "runlocal", "dataset=dtd,shots=16,seed=1"),
    "aape_cross_dataset": ("", "seed=1", "runlocal"),
    "aape_domain_generalization": ("", "seed=1", "runlocal"),
    "aape_retrieval": ("", "runlocal", "dataset=flickr30k,score=sum", "source=tfds"),
    "aape_retrieval_coco": ("", "flickr_root=/data/flickr30k-images", "source=tfds", "seed=2,aggregator=mean"),
    "aape_retrieval_flickr_zeroshot": ("", "score=sum"),
    "aape_retrieval_flickr_finetune": ("", "seed=2"),
    "aape_captioning": ("", "runlocal", "image_input=grid,aggregator=mean", "method=limber,dataset=coco"),
    "limber_captioning": ("", "runlocal", "image_input=grid"),
    "aape_vqa": ("", "runlocal", "style=update_style"),
}

# Run in a fresh interpreter: loads every config through ml_collections' own `--config FILE:ARGS` flag.
LOADER = r"""
import importlib.util, json, sys
from absl import flags
from ml_collections import config_flags

assert importlib.util.find_spec("experiments") is None, "the repository root is importable"
out = {}
for path, arg in json.load(sys.stdin):
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    values(["loader", f"--config={path}:{arg}"])
    out[f"{path}:{arg}"] = values.config.to_dict()
json.dump(out, sys.stdout)
"""


# ------------------------------------------------------------------ parse_arg


def test_parse_arg_types_values_by_their_defaults():
    args = parse_arg("seed=2,lr=0.5,name=dtd,runlocal=true", seed=1, lr=1e-3, name="", runlocal=False, other=7)
    assert args.to_dict() == {"seed": 2, "lr": 0.5, "name": "dtd", "runlocal": True, "other": 7}
    assert type(args.seed) is int and type(args.lr) is float and type(args.runlocal) is bool
    assert type(parse_arg("lr=2", lr=0.1).lr) is float  # an integral literal still becomes a float


@pytest.mark.parametrize("arg, expected", [("", False), ("runlocal", True), ("runlocal=True", True),
                                           ("runlocal=false", False), ("seed=3, runlocal ,", True)])
def test_parse_arg_bools(arg, expected):
    assert parse_arg(arg, runlocal=False, seed=1).runlocal is expected


def test_parse_arg_defaults_and_last_value_wins():
    assert parse_arg(None, seed=1, dataset="dtd").to_dict() == {"seed": 1, "dataset": "dtd"}  # type: ignore[arg-type]
    assert parse_arg("seed=2,seed=5", seed=1).seed == 5


def test_parse_arg_unknown_key_names_key_value_and_known():
    with pytest.raises(ValueError, match=r"unknown config argument 'shot' \(in 'shot=4'\); known arguments: "
                                         r"seed, shots, runlocal"):
        parse_arg("seed=1,shot=4", seed=1, shots=16, runlocal=False)


@pytest.mark.parametrize("arg, message", [
    ("seed=two", r"seed='two' is not an integer; known arguments: seed, lr, runlocal"),
    ("seed=2.5", r"seed='2.5' is not an integer"),
    ("lr=fast", r"lr='fast' is not a number; known arguments: seed, lr, runlocal"),
    ("runlocal=yes", r"runlocal='yes' is not true or false; known arguments: seed, lr, runlocal"),
    ("seed", r"'seed' needs a value \(seed=...\); known arguments: seed, lr, runlocal"),
])
def test_parse_arg_bad_value_names_key_value_and_known(arg, message):
    with pytest.raises(ValueError, match=message):
        parse_arg(arg, seed=1, lr=0.1, runlocal=False)


def test_parse_arg_rejects_an_untyped_default():
    with pytest.raises(TypeError, match="shape"):
        parse_arg("", shape=(1, 2))  # type: ignore[arg-type]


# ------------------------------------------------------------------ the configs' arguments


def test_config_arguments_are_typed_and_checked():
    assert classification.base2new("shots=4,seed=2", "coop").dataset.shots == 4
    assert classification.base2new("toyworld=false", "coop").clip == "openai/clip-vit-base-patch16"
    with pytest.raises(ValueError, match="shots='x'"):
        classification.base2new("shots=x", "aape")
    with pytest.raises(ValueError, match="'runlocal' and 'toyworld'"):
        classification.base2new("runlocal,toyworld", "aape")
    with pytest.raises(ValueError, match="unknown config argument 'toyworld'"):
        retrieval.get_config("toyworld")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retrieval_variants_accept_only_their_arguments():
    for name in ("aape_retrieval_flickr_zeroshot", "aape_retrieval_flickr_finetune"):
        for arg in ("runlocal", "source=tfds", "dataset=coco"):
            with pytest.raises(ValueError, match="unknown config argument"):
                _load(name).get_config(arg)
    with pytest.raises(ValueError, match="unknown config argument 'runlocal'"):
        _load("aape_retrieval_coco").get_config("runlocal")


# ------------------------------------------------------------------ experiments/*.py, by path


def test_every_experiment_file_is_listed():
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.py")) == sorted(DOCUMENTED)


def test_experiment_files_load_by_path_from_any_directory(tmp_path: pathlib.Path):
    # `aape_jax` is importable (as when installed), the repository root is not: an experiment file that
    # imports `experiments` (or anything else in the repository) fails to load.
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "aape_jax").symlink_to(ROOT / "aape_jax", target_is_directory=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    jobs = [(str(EXPERIMENTS / f"{name}.py"), arg) for name, args in DOCUMENTED.items() for arg in args]
    env = {**os.environ, "PYTHONPATH": str(installed), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", LOADER], cwd=work, env=env, input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout)
    assert len(loaded) == len(jobs)
    # The same configs as loading them here, from the repository root.
    for name, args in DOCUMENTED.items():
        module = _load(name)
        for arg in args:
            here = json.loads(json.dumps(module.get_config(arg).to_dict()))
            assert loaded[f"{EXPERIMENTS / name}.py:{arg}"] == here, (name, arg)
