"""The toy world's small CLIP: pretrained here, cached per machine, loaded like any checkpoint.

    python -m aape_jax.toyworld pretrain [--out DIR] [--tokenizer_dir DIR] [--force]

(The method table and scaling curves in this world: `launch/toyworld_table.py`.)

`pretrain` trains the project's Flax CLIP (width 64, 2 layers per tower, 32-px
images, patch 8, the real 49,408-token CLIP vocabulary; 1,800 AdamW steps of 128 pairs) contrastively on
captioned scenes of `aape_jax.data.toyworld`, writes a Hugging Face-format
checkpoint, scores zero-shot top-1 with "a photo of a {colour} {shape}." over
the 48 colour x shape classes on held-out images, and prints that as the last
line (JSON). The checkpoint is cached under a fingerprint of everything that
determines it (world version, geometry, optimisation, vocabulary), in
`$AAPE_CACHE_DIR/toyworld_clip/` (default `~/.cache/aape_jax`), so tests and
the offline default pretrain once per machine; `--out DIR` also copies it there.

Pretraining runs in a child process on the CPU, with one XLA device, no
`XLA_FLAGS` and two threads (`PRETRAIN_CPUS`), whoever asks: XLA's CPU matmuls
round differently with the thread count and the simulated device count, and
1,800 steps turn last-bit differences into another CLIP. Measured on the 2-core
development machine: 8 simulated devices (the test suite's) gave a CLIP of the
same quality (zero-shot 80.94% against 80.42%) on which CoOp's toy_concepts base
accuracy was 16.3% instead of 54.0%. With the child, a test worker and the
command line build the same checkpoint (verified byte for byte); a host with more
cores or a GPU runs the same two-thread CPU child, which should give it too on
the same CPU model (not verified here); a 1-CPU host cannot (one thread gave yet
another CLIP, 79.27%).

The real vocabulary is read from `--tokenizer_dir`, else `$AAPE_CLIP_TOKENIZER_DIR`,
else `../shared/data/clip_tokenizer` beside the working directory or the
repository (where the project's development data lives).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from aape_jax.clip.config import CLIPConfig, TextConfig, VisionConfig
from aape_jax.clip.pretrain import PretrainConfig, pretrain, tokenize_captions, zero_shot_accuracy
from aape_jax.clip.preprocess import ImageTransform
from aape_jax.clip.tiny import write_checkpoint
from aape_jax.clip.tokenizer import Tokenizer
from aape_jax.data import toyworld as world

GEOMETRY = CLIPConfig(
    text=TextConfig(vocab_size=49408, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
                    context_length=24, eot_token_id=49407),
    vision=VisionConfig(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
                        image_size=world.IMAGE_SIZE, patch_size=8),
    projection_dim=64,
)
OPTIM = PretrainConfig(steps=1800, batch_size=128, learning_rate=4e-3, warmup_steps=50, weight_decay=0.05, seed=0)
POOL_SCENES = 20000  # rendered once per pretraining; each has two captions
HELDOUT_PER_CLASS = 20  # held-out zero-shot images per colour x shape class
ZERO_SHOT_TEMPLATE = "a photo of a {}."
SUMMARY_FILE = "pretraining.json"
CLIP_NAME = "toyworld"  # the value of config.clip (and AAPEClassifier.load's clip=) that means this CLIP
_TOKENIZER_FILES = ("vocab.json", "merges.txt")
PRETRAIN_CPUS = 2  # threads of the pretraining child (see the module docstring)


# ------------------------------------------------------------------ where things are


def default_tokenizer_dir() -> str:
    """The real CLIP vocabulary's directory (see the module docstring for the search order)."""
    env = os.environ.get("AAPE_CLIP_TOKENIZER_DIR")
    candidates = [pathlib.Path(env)] if env else []
    for base in (pathlib.Path.cwd(), pathlib.Path(__file__).resolve().parents[1]):
        candidates.append(base.parent / "shared" / "data" / "clip_tokenizer")
    for c in candidates:
        if all((c / f).is_file() for f in _TOKENIZER_FILES):
            return str(c)
    raise FileNotFoundError(
        "the toy world's CLIP needs the real CLIP vocabulary (vocab.json, merges.txt); looked in "
        + ", ".join(map(str, candidates)) + ": pass --tokenizer_dir DIR or set AAPE_CLIP_TOKENIZER_DIR")


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("AAPE_CACHE_DIR") or pathlib.Path.home() / ".cache" / "aape_jax")


def fingerprint(tokenizer_dir: str) -> str:
    """Hash of what determines the checkpoint: world, geometry, optimisation, pool, vocabulary."""
    h = hashlib.sha256()
    spec = {"world": world.WORLD_VERSION, "geometry": GEOMETRY.to_hf_dict(), "optim": OPTIM.__dict__,
            # 3: built in the pinned child; an older entry may hold another realisation (e.g. a test suite's).
            "pool": POOL_SCENES, "pretrain_version": 3}
    h.update(json.dumps(spec, sort_keys=True).encode())
    for name in _TOKENIZER_FILES:
        h.update(pathlib.Path(tokenizer_dir, name).read_bytes())
    return h.hexdigest()[:16]


def cached_checkpoint_dir(tokenizer_dir: str | None = None) -> pathlib.Path:
    tokenizer_dir = tokenizer_dir or default_tokenizer_dir()
    return cache_root() / "toyworld_clip" / fingerprint(tokenizer_dir)


# ------------------------------------------------------------------ pretraining


def heldout_accuracy(directory: str) -> float:
    """Zero-shot top-1 (%) of the checkpoint in `directory`, loaded through `clip.load`."""
    from aape_jax import clip

    model = clip.load(directory)
    images, labels = world.zero_shot_set(HELDOUT_PER_CLASS)
    prompts = [ZERO_SHOT_TEMPLATE.format(f"{c} {s}") for c, s in world.CLASSES]
    return zero_shot_accuracy(model.encode_image, model.encode_text, model.preprocess(images), labels,
                              model.tokenize(prompts))


def build_checkpoint(directory: str | os.PathLike, tokenizer_dir: str) -> dict:
    """Pretrains and writes the checkpoint into `directory`; returns its summary (also in pretraining.json)."""
    start = time.time()
    tokenizer = Tokenizer.from_dir(tokenizer_dir, GEOMETRY.text.context_length, GEOMETRY.text.vocab_size)
    images, captions, groups = world.pretraining_pool(POOL_SCENES)
    ids = tokenize_captions(tokenizer, captions)
    transform = ImageTransform.openai(GEOMETRY.vision.image_size)
    params, losses = pretrain(GEOMETRY, images, ids, OPTIM, transform, groups, desc="pretraining the toy-world CLIP")
    write_checkpoint(directory, GEOMETRY, tokenizer_dir=tokenizer_dir, params=params)
    accuracy = heldout_accuracy(os.fspath(directory))
    summary = {"zero_shot_top1": round(accuracy, 2), "num_classes": len(world.CLASSES),
               "seconds": round(time.time() - start, 1), "steps": OPTIM.steps,
               "final_loss": round(float(np.mean(losses[-25:])), 4),
               "prompt": ZERO_SHOT_TEMPLATE.format("{colour} {shape}"), "world_version": world.WORLD_VERSION}
    pathlib.Path(directory, SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_in_child(directory: pathlib.Path, tokenizer_dir: str) -> None:
    """`build_checkpoint` in a fresh CPU process pinned to `PRETRAIN_CPUS` threads (the module docstring says why)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "aape_jax.toyworld", "build", os.fspath(directory),
               "--tokenizer_dir", tokenizer_dir]
    code = subprocess.run(command, env=env).returncode  # its progress bar and errors go to our stderr
    if code:
        raise RuntimeError(f"pretraining the toy-world CLIP failed (exit code {code}; its error is printed above); "
                           "no cache entry was written")


def pretrained_clip(tokenizer_dir: str | None = None, force: bool = False) -> str:
    """The cached toy-world CLIP's directory, pretraining it first when this machine has none.

    A crash mid-pretraining leaves only a temporary directory: the cache entry
    appears (by rename) complete or not at all. Processes of one machine asking
    at once (parallel test workers, a multi-process launch on one host)
    pretrain once: the others wait on a lock file beside the entry, then read it.
    """
    tokenizer_dir = tokenizer_dir or default_tokenizer_dir()
    target = cached_checkpoint_dir(tokenizer_dir)
    if (target / SUMMARY_FILE).is_file() and not force:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process pretraining the toy-world CLIP into {target}", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (target / SUMMARY_FILE).is_file():  # that process's entry (even when forced: it is fresh)
                return str(target)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build_in_child(tmp, tokenizer_dir)
            os.chmod(tmp, 0o755)
            if force and target.exists():
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / SUMMARY_FILE).is_file():  # not a complete entry of another machine's process
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def summary(directory: str) -> dict:
    return json.loads(pathlib.Path(directory, SUMMARY_FILE).read_text())


# ------------------------------------------------------------------ command line


def _pretrain_command(args: argparse.Namespace) -> int:
    directory = pretrained_clip(args.tokenizer_dir, force=args.force)
    if args.out:
        shutil.copytree(directory, args.out, dirs_exist_ok=True)
        directory = args.out
    result = summary(directory)
    print(json.dumps({"checkpoint": os.path.abspath(directory), **result}))
    return 0


def _build_command(args: argparse.Namespace) -> int:
    # Pinned before the first computation creates XLA's CPU client, which sizes its thread pool by the affinity.
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:PRETRAIN_CPUS])
    build_checkpoint(args.directory, args.tokenizer_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aape_jax.toyworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain (or reuse) the toy-world CLIP")
    p.add_argument("--out", default="", help="also copy the checkpoint here")
    p.add_argument("--tokenizer_dir", default=None, help="directory with the real vocab.json and merges.txt")
    p.add_argument("--force", action="store_true", help="pretrain again even if cached")
    p.set_defaults(run=_pretrain_command)
    # Internal: what `pretrained_clip` runs in its child process, into an empty temporary directory.
    b = sub.add_parser("build", help=argparse.SUPPRESS)
    b.add_argument("directory")
    b.add_argument("--tokenizer_dir", required=True)
    b.set_defaults(run=_build_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
