"""The toy world's pretrained CLIP: a real HF checkpoint, far above chance zero-shot, also on plain drawings."""

import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from transformers import CLIPModel

from aape_jax import clip, toyworld
from aape_jax.clip.preprocess import ImageTransform
from aape_jax.clip.pretrain import PretrainConfig, pretrain, tokenize_captions
from aape_jax.clip.tokenizer import Tokenizer
from aape_jax.data import toyworld as world

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_checkpoint_is_hf_format_and_equals_transformers(toy_clip_dir):
    ours = clip.load(toy_clip_dir)
    assert ours.config == toyworld.GEOMETRY and ours.tokenizer.vocab_size == 49408
    hf = CLIPModel.from_pretrained(toy_clip_dir).eval()
    images, _ = world.zero_shot_set(1)
    pixels = ours.preprocess(images[:12])
    ids = ours.tokenize(["a photo of a red circle.", "two blue stars.", "a crimson disc on the left."])
    with torch.no_grad():
        ref_zi = hf.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        ref_zt = hf.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))
    ref_zi = getattr(ref_zi, "pooler_output", ref_zi).numpy()
    ref_zt = getattr(ref_zt, "pooler_output", ref_zt).numpy()
    np.testing.assert_allclose(ours.encode_image(pixels), ref_zi, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.encode_text(ids), ref_zt, atol=1e-4, rtol=0)
    assert ours.logit_scale == pytest.approx(float(hf.logit_scale.detach().exp()), rel=1e-6)


def test_zero_shot_on_held_out_images_is_far_above_chance(toy_clip_dir):
    summary = toyworld.summary(toy_clip_dir)
    assert summary["num_classes"] == len(world.CLASSES) == 48
    accuracy = toyworld.heldout_accuracy(toy_clip_dir)  # recomputed through clip.load, not read back
    assert accuracy == pytest.approx(summary["zero_shot_top1"], abs=0.01)
    assert accuracy >= 75.0  # chance: 2.1%


def _plain_shape(color, shape, size=32, scale=4, seed=0):
    """One flat-coloured shape on plain grey, drawn with PIL primitives (not the world's generator)."""
    rng = np.random.default_rng(seed)
    big = size * scale
    im = PIL.Image.new("RGB", (big, big), (128, 128, 128))
    d = PIL.ImageDraw.Draw(im)
    r = big * rng.uniform(0.25, 0.36)
    cx, cy = big / 2 + rng.uniform(-0.08, 0.08) * big, big / 2 + rng.uniform(-0.08, 0.08) * big
    rgb = world.COLORS[color]
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=rgb)
    elif shape == "ring":
        d.ellipse(box, fill=rgb)
        d.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=(128, 128, 128))
    elif shape == "square":
        d.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=rgb)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + 0.87 * r, cy + 0.5 * r), (cx - 0.87 * r, cy + 0.5 * r)], fill=rgb)
    elif shape == "star":
        pts = [(cx + (r if k % 2 == 0 else 0.4 * r) * math.sin(k * math.pi / 5),
                cy - (r if k % 2 == 0 else 0.4 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=rgb)
    elif shape == "cross":
        d.rectangle([cx - 0.3 * r, cy - r, cx + 0.3 * r, cy + r], fill=rgb)
        d.rectangle([cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r], fill=rgb)
    return np.asarray(im.resize((size, size), PIL.Image.Resampling.LANCZOS))


def test_zero_shot_on_plainly_drawn_shapes(toy_clip_dir):
    model = clip.load(toy_clip_dir)
    images, labels = [], []
    for label, (color, shape) in enumerate(world.CLASSES):
        for seed in range(3):
            images.append(_plain_shape(color, shape, seed=seed))
            labels.append(label)
    prompts = model.tokenize([f"a photo of a {c} {s}." for c, s in world.CLASSES])
    zi = model.encode_image(model.preprocess(images))
    zt = model.encode_text(prompts)
    pred = (zi / np.linalg.norm(zi, axis=-1, keepdims=True) @ (zt / np.linalg.norm(zt, axis=-1, keepdims=True)).T)
    accuracy = 100 * np.mean(pred.argmax(-1) == np.asarray(labels))
    assert accuracy >= 60.0, accuracy


def test_cli_reuses_the_cache_and_prints_json_last(toy_clip_dir, shared_data, tmp_path):
    out = tmp_path / "copy"
    done = subprocess.run([sys.executable, "-m", "aape_jax.toyworld", "pretrain", "--out", str(out),
                           "--tokenizer_dir", str(shared_data / "clip_tokenizer")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"zero_shot_top1", "num_classes", "seconds"} <= set(last)
    assert last["zero_shot_top1"] == toyworld.summary(toy_clip_dir)["zero_shot_top1"]
    assert "pretraining the toy-world CLIP" not in done.stderr  # cached: no training
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"):
        assert (out / name).is_file()
    assert clip.load(str(out)).config == toyworld.GEOMETRY


def test_fingerprint_follows_what_determines_the_checkpoint(shared_data, tmp_path, monkeypatch):
    real = str(shared_data / "clip_tokenizer")
    base = toyworld.fingerprint(real)
    monkeypatch.setattr(world, "WORLD_VERSION", world.WORLD_VERSION + 1)
    assert toyworld.fingerprint(real) != base
    monkeypatch.undo()
    other = tmp_path / "tok"
    other.mkdir()
    (other / "vocab.json").write_text((shared_data / "clip_tokenizer" / "vocab.json").read_text())
    (other / "merges.txt").write_text((shared_data / "clip_tokenizer" / "merges.txt").read_text() + "\n")
    assert toyworld.fingerprint(str(other)) != base
    monkeypatch.setenv("AAPE_CACHE_DIR", str(tmp_path / "cache"))
    assert str(toyworld.cached_checkpoint_dir(real)).startswith(str(tmp_path / "cache"))


def test_processes_asking_at_once_pretrain_once(shared_data, tmp_path, monkeypatch):
    # Parallel test workers (or a host's several processes) on a cold machine: one builds, the others wait
    # for its entry instead of pretraining again; a crashed build leaves no entry.
    monkeypatch.setenv("AAPE_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def build(directory, tokenizer_dir):
        builds.append(directory)
        time.sleep(0.5)  # the others arrive while this one holds the lock
        (directory / toyworld.SUMMARY_FILE).write_text("{}")

    monkeypatch.setattr(toyworld, "build_in_child", build)
    tokenizer = str(shared_data / "clip_tokenizer")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: toyworld.pretrained_clip(tokenizer), range(3)))
    assert len(builds) == 1 and len(set(paths)) == 1
    assert pathlib.Path(paths[0], toyworld.SUMMARY_FILE).is_file()

    monkeypatch.setattr(toyworld, "build_in_child", lambda directory, tokenizer_dir: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        toyworld.pretrained_clip(tokenizer, force=True)
    assert pathlib.Path(paths[0], toyworld.SUMMARY_FILE).is_file()  # the old entry stays until one is built
    assert sorted(p.name for p in (tmp_path / "cache" / "toyworld_clip").iterdir()) == sorted(
        [pathlib.Path(paths[0]).name, f".{pathlib.Path(paths[0]).name}.lock"])


def test_pretraining_runs_in_a_pinned_cpu_child(tmp_path, monkeypatch):
    # The checkpoint must not depend on who asks: the test suite's 8 simulated devices (XLA_FLAGS) and the
    # thread count changed the weights (a GPU platform would too), so the child gets none of them.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    calls = []

    def run(command, env):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(toyworld.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="exit code 3"):
        toyworld.build_in_child(tmp_path / "entry", "/vocab")
    (command, env), = calls
    assert command[1:4] == ["-m", "aape_jax.toyworld", "build"] and command[-1] == "/vocab"
    assert "XLA_FLAGS" not in env and env["JAX_PLATFORMS"] == "cpu"

    # The child pins itself before its first computation (to one CPU here, so that a 2-core machine shows it).
    monkeypatch.setattr(toyworld, "PRETRAIN_CPUS", 1)
    seen = []
    monkeypatch.setattr(toyworld, "build_checkpoint", lambda d, t: seen.append((d, t, os.sched_getaffinity(0))))
    before = os.sched_getaffinity(0)
    try:
        assert toyworld.main(["build", str(tmp_path / "entry"), "--tokenizer_dir", "/vocab"]) == 0
    finally:
        os.sched_setaffinity(0, before)
    (directory, tokenizer_dir, cpus), = seen
    assert (directory, tokenizer_dir) == (str(tmp_path / "entry"), "/vocab")
    assert cpus == {min(before)}


def test_missing_vocabulary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AAPE_CLIP_TOKENIZER_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(toyworld.pathlib.Path, "resolve", lambda self: tmp_path / "a" / "b" / "c")
    with pytest.raises(FileNotFoundError, match="AAPE_CLIP_TOKENIZER_DIR"):
        toyworld.default_tokenizer_dir()


def test_pretraining_learns_to_match_images_with_their_captions(shared_data):
    # A few steps of a tiny CLIP: the contrastive loss must fall far below its start (ln B when
    # random), which it cannot if the step pairs images with other images' captions.
    g = toyworld.GEOMETRY
    geometry = dataclasses.replace(
        g, text=dataclasses.replace(g.text, hidden_size=32, intermediate_size=64, num_layers=1),
        vision=dataclasses.replace(g.vision, hidden_size=32, intermediate_size=64, num_layers=1), projection_dim=32)
    images, captions, groups = world.pretraining_pool(256, seed=5)
    tokenizer = Tokenizer.from_dir(str(shared_data / "clip_tokenizer"), g.text.context_length, g.text.vocab_size)
    opt = PretrainConfig(steps=150, batch_size=32, learning_rate=4e-3, warmup_steps=10)
    _, losses = pretrain(geometry, images, tokenize_captions(tokenizer, captions), opt,
                         ImageTransform.openai(g.vision.image_size), groups)
    assert losses[0] > 0.8 * math.log(32)
    assert np.mean(losses[-20:]) < 0.6 * losses[0], (losses[0], np.mean(losses[-20:]))
