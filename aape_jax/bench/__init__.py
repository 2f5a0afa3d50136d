r"""Benchmarks: ours vs transformers' PyTorch CLIP (and decoder) on the same weights, in one process.

    python -m aape_jax.bench towers       # image/text tower throughput, MFU of the image tower
    python -m aape_jax.bench train_step   # training images/s, B=32, C=50: token vs PyTorch, feature vs token
    python -m aape_jax.bench inference    # per-image classification cost, C = 10, 100, 1000
    python -m aape_jax.bench features     # base-to-new run: cold feature store vs rerun
    python -m aape_jax.bench lm           # decoder prefill / cached decoding tokens/s vs transformers' GPT-2
    python -m aape_jax.bench NAME --smoke # tiny geometry, one repeat (CI); figures mean nothing

Every benchmark prints its configuration, the machine and its figures, and as
its LAST line one JSON object. Weights: a random CLIP of the real ViT-B/16
geometry and 49,408-token vocabulary (`clip.tiny.write_checkpoint`, vocabulary
from `--tokenizer_dir`), loaded by our `clip.load` and by
`transformers.CLIPModel.from_pretrained` from the same directory; for `lm`, a
random decoder of GPT-2 small's width, heads and 50,257-token vocabulary with
`--lm_layers` blocks (`lm.tiny.write_checkpoint`), loaded by our `lm.load` and
by `transformers.AutoModelForCausalLM.from_pretrained`.
Timings: a warm-up call (compilation) excluded, then the median of
`--repeats` calls, each blocking until its result is ready. PyTorch runs fp32
with all cores (`torch.set_num_threads(os.cpu_count())`), on the GPU when
there is one.

This module is the JAX side; the PyTorch side (reference CLIP, the PyTorch
AAPE step, the reference decoder) is `aape_jax.bench.torch_reference`,
imported only by the benchmarks that compare against it (`towers`,
`train_step`, `lm`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aape_jax import clip as clip_lib
from aape_jax import lm
from aape_jax import toyworld, trainer, zeroshot
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.tiny import write_checkpoint
from aape_jax.configs.classification import base2new
from aape_jax.data.text_features import class_text
from aape_jax.errors import ConfigError
from aape_jax.inference import AAPEClassifier
from aape_jax.lm import generate as lm_generate
from aape_jax.lm import tiny as lm_tiny
from aape_jax.models.aape import AAPE, AAPEConfig, init_params
from aape_jax.models.heads import make_head
from aape_jax.train_step import LossWeights, StepData, make_loss_fn

# The directory holding the `aape_jax` package (put on the memory subprocess's path).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_ENV = "AAPE_CLIP_TOKENIZER_DIR"
TEMPLATE = "a photo of a {}."
PROMPTS = 8  # M: prompt features per class in the train step's prompt table
# Class names of realistic length (1-4 words), cycled to any C.
_NAMES = ("golden retriever", "tabby cat", "red fox", "airliner", "sports car", "school bus", "mountain bike",
          "sunflower", "daisy", "pizza", "cheeseburger", "espresso", "lighthouse", "castle", "volcano",
          "coral reef", "bald eagle", "great white shark", "king penguin", "monarch butterfly", "grand piano",
          "acoustic guitar", "wooden spoon", "teddy bear", "hot air balloon")


def class_names(n: int) -> list[str]:
    return [_NAMES[i % len(_NAMES)] + ("" if i < len(_NAMES) else f" {i // len(_NAMES)}") for i in range(n)]


# ------------------------------------------------------------------ shared helpers


def timeit(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time (s) of `repeats` calls of `fn` after one untimed warm-up call; `fn` must block."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info(reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """This machine and JAX; `reference` adds the PyTorch side's (`torch_reference.machine_info()`)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
            "jax_device": f"{dev.platform}:{dev.device_kind}", "jax_devices": jax.device_count(), **(reference or {})}


def resolve_tokenizer_dir(flag: str | None) -> str:
    """The real CLIP vocabulary's directory: `--tokenizer_dir`, else `toyworld.default_tokenizer_dir()`."""
    if flag:
        missing = [f for f in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(flag, f))]
        if missing:
            raise ConfigError(f"--tokenizer_dir {flag} has no {' or '.join(missing)}",
                              hint="pass the directory holding the real CLIP vocab.json and merges.txt")
        return os.path.abspath(flag)
    try:
        return toyworld.default_tokenizer_dir()
    except FileNotFoundError as e:
        raise ConfigError(
            "the benchmarks' ViT-B/16 CLIP needs the real CLIP vocabulary (vocab.json, merges.txt): pass "
            f"--tokenizer_dir DIR or set {TOKENIZER_ENV} (aape_jax.toyworld.default_tokenizer_dir() found none: {e})",
            hint="--smoke runs without it") from e


def make_checkpoint(directory: str, args: argparse.Namespace) -> str:
    """A random CLIP: real ViT-B/16 geometry and vocabulary (`args.tokenizer_dir`, resolved by `main`), or
    `tiny` (own vocabulary) with --smoke."""
    if args.smoke:
        return write_checkpoint(directory, "tiny", seed=0)
    return write_checkpoint(directory, "vit-b-16", seed=0, tokenizer_dir=args.tokenizer_dir)


def report(name: str, config: dict, figures: dict, result: dict, reference: dict | None = None) -> None:
    print(f"== bench {name}")
    print("config:", json.dumps(config))
    print("machine:", json.dumps(machine_info(reference)))
    for k, v in figures.items():
        print(f"  {k}: {v}")
    print(json.dumps(result), flush=True)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def matmul_peak(size: int, repeats: int) -> dict[str, float]:
    """Measured fp32 matmul FLOP/s of this machine, with JAX and with PyTorch ([size, size] @ [size, size])."""
    from aape_jax.bench import torch_reference

    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)).astype(np.float32))
    mm = jax.jit(lambda x, y: x @ y)
    t_jax = timeit(lambda: mm(a, a).block_until_ready(), repeats)
    t_torch = timeit(torch_reference.matmul_call(size), repeats)
    flops = 2 * size**3
    return {"jax": flops / t_jax, "torch": flops / t_torch}


# ------------------------------------------------------------------ 1. towers


def bench_towers(args: argparse.Namespace) -> None:
    from aape_jax.bench import torch_reference

    with tempfile.TemporaryDirectory() as d:
        path = make_checkpoint(d, args)
        ours, ref = clip_lib.load(path), torch_reference.load_reference(path)
    r = ours.config.vision.image_size
    n_img, n_txt = (8, 16) if args.smoke else (args.images, args.prompts)
    pixels = np.random.default_rng(0).normal(size=(n_img, r, r, 3)).astype(np.float32)
    ids77 = ours.tokenize([TEMPLATE.format(c) for c in class_names(n_txt)])  # [N, 77]: OpenAI's context
    trimmed = int(ours.tokenizer.eot_positions(ids77).max()) + 1
    towers = torch_reference.Towers(ref, pixels, ids77, trimmed)

    # Equal outputs first: the comparison is between the same computation.
    ref_img, ref_txt = towers.features()
    err_img = float(np.abs(ours.encode_image(pixels) - ref_img).max())
    err_txt = float(np.abs(ours.encode_text(ids77) - ref_txt).max())

    rep = args.repeats
    t_img_ours = timeit(lambda: ours.encode_image(pixels), rep)
    t_img_ref = timeit(towers.image_call(), rep)
    t_txt_ours = timeit(lambda: ours.encode_text(ids77), rep)
    t_txt_ref = timeit(towers.text_call(), rep)
    t_txt_ref_trim = timeit(towers.text_call(trimmed=True), rep)

    # Achieved FLOP/s of our image tower (XLA's own FLOP count of the compiled program) / measured matmul peak.
    # The same program `FrozenCLIP.encode_image` runs on this batch (its bucket of n_img=8 rows is n_img).
    encode_image = jax.jit(lambda params, x: ours.module.apply({"params": params}, x, method="encode_image"))
    cost = encode_image.lower(ours.params, jnp.asarray(pixels)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_img = float(cost["flops"]) / n_img
    peak = matmul_peak(512 if args.smoke else 2048, rep)
    ips_ours, ips_ref = n_img / t_img_ours, n_img / t_img_ref
    pps_ours, pps_ref = n_txt / t_txt_ours, n_txt / t_txt_ref
    result = {
        "image_ratio": _round(ips_ours / ips_ref),
        "text_ratio": _round(pps_ours / pps_ref),
        "mfu_image": _round(flops_img * ips_ours / max(peak.values())),
        "text_ratio_vs_trimmed_reference": _round(pps_ours / (n_txt / t_txt_ref_trim)),
    }
    figures = {
        "max |ours - reference| image / text features": f"{err_img:.2e} / {err_txt:.2e}",
        "image tower images/s (ours, reference)": f"{ips_ours:.3f}, {ips_ref:.3f}",
        "text tower prompts/s (ours, reference at 77 positions)": f"{pps_ours:.2f}, {pps_ref:.2f}",
        f"reference text prompts/s, trimmed to {trimmed} positions": f"{n_txt / t_txt_ref_trim:.2f}",
        "image tower GFLOP/image (XLA cost analysis)": f"{flops_img / 1e9:.2f}",
        "fp32 matmul peak GFLOP/s (jax, torch)": f"{peak['jax'] / 1e9:.1f}, {peak['torch'] / 1e9:.1f}",
        "image tower achieved GFLOP/s": f"{flops_img * ips_ours / 1e9:.1f}",
    }
    report("towers", {"images": n_img, "prompts": n_txt, "repeats": rep, "smoke": args.smoke,
                      "geometry": "tiny" if args.smoke else "vit-b-16"}, figures, result,
           reference=torch_reference.machine_info())


# ------------------------------------------------------------------ 2. train step


def _aggregator_heads(clip: FrozenCLIP) -> int:
    return 8 if clip.config.projection_dim % 8 == 0 else 4


def _generator_hidden(clip: FrozenCLIP) -> int:
    return max(1, clip.config.projection_dim // 16)


def _aape(clip: FrozenCLIP, combine: str, token_position: str, num_heads: int) -> AAPE:
    """The benchmarks' one-token AAPE learner on `clip`'s geometry."""
    d = clip.config.projection_dim
    head = make_head(combine, d, clip.config.text.hidden_size, num_tokens=1, token_position=token_position)
    return AAPE(AAPEConfig(embed_dim=d, head=head, num_heads=num_heads, generator_hidden=_generator_hidden(clip)))


def _step_inputs(clip: FrozenCLIP, batch: int, classes: int):
    rng = np.random.default_rng(0)
    d = clip.config.projection_dim
    table = rng.normal(size=(classes, PROMPTS, d)).astype(np.float32)
    table /= np.linalg.norm(table, axis=-1, keepdims=True)
    labels = rng.integers(0, classes, size=batch).astype(np.int32)
    feats = rng.normal(size=(batch, d)).astype(np.float32)
    b = {"features": jnp.asarray(feats), "labels": jnp.asarray(labels), "prompt_rows": jnp.asarray(labels),
         "index": jnp.arange(batch, dtype=jnp.int32)}
    return b, table


def make_our_step(clip: FrozenCLIP, combine: str, token_position: str, batch: int, classes: int):
    """Our jitted train step (the one train.py runs: `trainer.make_step(train_step.make_loss_fn(...), tx)`)
    with its inputs; returns (run_one_step, jitted, args)."""
    model = _aape(clip, combine, token_position, _aggregator_heads(clip))
    head = model.config.head
    b, table = _step_inputs(clip, batch, classes)
    data = StepData(prompts=jnp.asarray(table), prompt_mask=jnp.ones((classes, PROMPTS), bool),
                    class_text=class_text(clip, TEMPLATE, class_names(classes), head.num_tokens),
                    clip_params=clip.params if head.uses_text_tower else None,
                    logit_scale=jnp.asarray(clip.params["logit_scale"]))
    params = init_params(model, jax.random.key(0))
    tx = optax.sgd(0.002, momentum=0.9)
    state = trainer.TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params))
    jitted = jax.jit(trainer.make_step(make_loss_fn(model, clip.module, LossWeights()), tx), donate_argnums=0)
    key = jax.random.key(0)
    holder = [state]

    def run():
        holder[0], metrics = jitted(holder[0], b, data, key)
        jax.block_until_ready(metrics)

    return run, jitted, (state, b, data, key)


def bench_train_step(args: argparse.Namespace) -> None:
    from aape_jax.bench import torch_reference

    batch, classes = (8, 5) if args.smoke else (32, args.classes)
    rep = args.repeats
    with tempfile.TemporaryDirectory() as d:
        path = make_checkpoint(d, args)
        clip, ref = clip_lib.load(path), torch_reference.load_reference(path)
    secs = {}
    for name, combine, position in (("token_prefix", "token", "prefix"), ("token_suffix", "token", "suffix"),
                                    ("feature", "feature", "prefix")):
        run, _, _ = make_our_step(clip, combine, position, batch, classes)
        secs[name] = timeit(run, rep if combine == "token" else max(rep, 20))
    b, table = _step_inputs(clip, batch, classes)
    labels = np.asarray(b["labels"])
    t_feats = torch_reference.to_device(np.asarray(b["features"]))
    t_labels = torch_reference.to_device(labels.astype(np.int64))
    t_prompts = torch_reference.to_device(table[labels])  # [B, M, D]
    ct = class_text(clip, TEMPLATE, class_names(classes), 1)
    for position in ("prefix", "suffix"):
        torch_step = torch_reference.TorchAAPE(ref, clip, ct, position, _aggregator_heads(clip),
                                               _generator_hidden(clip))
        secs[f"torch_{position}"] = timeit(lambda: torch_step.step(t_feats, t_labels, t_prompts), rep)
    ips = {k: batch / v for k, v in secs.items()}
    memory = {} if args.smoke else {position: step_memory_subprocess(args, position, batch, args.memory_classes)
                                    for position in ("prefix", "suffix")}
    result = {
        "token_vs_torch": _round(ips["token_suffix"] / ips["torch_suffix"]),
        "feature_vs_token": _round(ips["feature"] / ips["token_suffix"]),
        "token_prefix_vs_torch": _round(ips["token_prefix"] / ips["torch_prefix"]),
        "feature_vs_token_prefix": _round(ips["feature"] / ips["token_prefix"]),
        # XLA's buffers of the compiled step (temporaries + arguments); RSS figures are printed above.
        "peak_memory_gb_token_suffix": _step_gb(memory.get("suffix", {})),
        "peak_memory_gb_token_prefix": _step_gb(memory.get("prefix", {})),
    }
    figures = {f"{k} training images/s": f"{v:.3f}" for k, v in ips.items()}
    for position, m in memory.items():
        figures[f"memory, token {position} step, B={batch} C={args.memory_classes}"] = json.dumps(m)
    report("train_step", {"batch": batch, "classes": classes, "repeats": rep, "smoke": args.smoke,
                          "template": TEMPLATE, "num_tokens": 1}, figures, result,
           reference=torch_reference.machine_info())


def step_memory(args: argparse.Namespace) -> None:
    """(subprocess) Peak memory of one token-mode step, two ways.

    * XLA's own buffer assignment of the compiled step (`memory_analysis`):
      temporaries (activations kept for the backward pass, workspaces) and arguments.
    * The process's resident-set peak (VmHWM) while a warm step runs: the step
      runs once (compilation), the kernel's peak counter is reset
      (`/proc/self/clear_refs` <- 5), the step runs again, and the new peak minus
      the resident set just before it is the step's own increase.
    """
    with tempfile.TemporaryDirectory() as d:
        clip = clip_lib.load(make_checkpoint(d, args))
    run, jitted, step_args = make_our_step(clip, "token", args.token_position, args.batch, args.classes)
    mem = jitted.lower(*step_args).compile().memory_analysis()
    run()  # compiles and runs once
    before = _status_gb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    run()
    peak = _status_gb("VmHWM")
    print(json.dumps({
        "rss_before_step_gb": round(before, 3), "peak_rss_gb": round(peak, 3),
        "peak_rss_increase_gb": round(peak - before, 3),
        "xla_temp_gb": round(mem.temp_size_in_bytes / 2**30, 3) if mem is not None else None,
        "xla_args_gb": round(mem.argument_size_in_bytes / 2**30, 3) if mem is not None else None,
    }))


def _status_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 2**20


def _step_gb(m: dict) -> float | None:
    return round(m["xla_temp_gb"] + m["xla_args_gb"], 3) if m.get("xla_temp_gb") is not None else None


def step_memory_subprocess(args: argparse.Namespace, position: str, batch: int, classes: int) -> dict:
    cmd = [sys.executable, "-m", "aape_jax.bench", "_step_memory", "--token_position", position, "--batch",
           str(batch), "--classes", str(classes), "--tokenizer_dir", args.tokenizer_dir]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:  # -9: killed, typically by the kernel's out-of-memory killer
        return {"error": f"exit {out.returncode}", "stderr": out.stderr[-1000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ 3. inference


def _untrained_classifier(clip: FrozenCLIP, token_position: str) -> AAPEClassifier:
    """An `AAPEClassifier` (token head, one token) with freshly initialised weights: cost does not depend on them."""
    model = _aape(clip, "token", token_position, num_heads=4)
    return AAPEClassifier(clip, model, init_params(model, jax.random.key(0)), TEMPLATE)


def bench_inference(args: argparse.Namespace) -> None:
    """Per-image cost of the user paths from preprocessed pixels: zero-shot CLIP (`zeroshot.predict`'s
    `encode_image` + `scores`) and `AAPEClassifier.predict_proba_pixels`, suffix and prefix.

    Each side's per-class-list work (zero-shot's text features; the classifier's
    cached template ids and prefix cache) is done once: before timing, or in the
    untimed warm-up call that also compiles.
    """
    with tempfile.TemporaryDirectory() as d:
        clip = clip_lib.load(make_checkpoint(d, args))
    n = 4 if args.smoke else args.images
    r = clip.config.vision.image_size
    pixels = np.random.default_rng(0).normal(size=(n, r, r, 3)).astype(np.float32)  # host arrays, as preprocess gives
    sizes = (10, 100) if args.smoke else (10, 100, 1000)
    rep = args.repeats
    scale = jnp.float32(clip.logit_scale)
    classifiers = {position: _untrained_classifier(clip, position) for position in ("suffix", "prefix")}

    per_image: dict[str, dict[int, float | None]] = {"zeroshot": {}, "aape_suffix": {}, "aape_prefix": {}}
    for c in sizes:
        names = class_names(c)
        weights = zeroshot.class_weights(clip, names, [TEMPLATE])
        per_image["zeroshot"][c] = timeit(
            lambda: np.asarray(zeroshot.scores(clip.encode_image(pixels), weights, scale)), rep) / n
        for position, clf in classifiers.items():
            skip = position == "prefix" and c > 100 and not args.full  # the plain path at C=1000 takes minutes on a CPU
            per_image[f"aape_{position}"][c] = None if skip else timeit(
                lambda: clf.predict_proba_pixels(pixels, names), rep) / n
    result = {
        "zeroshot_cost_over_aape_c100": _round(per_image["zeroshot"][100] / per_image["aape_suffix"][100]),
        "zeroshot_cost_over_aape_prefix_c100": _round(per_image["zeroshot"][100] / per_image["aape_prefix"][100]),
        "ms_per_image": {k: {str(c): (None if t is None else _round(t * 1e3)) for c, t in v.items()}
                         for k, v in per_image.items()},
    }
    figures = {f"{k} ms/image at C={c}": ("skipped (--full)" if t is None else f"{t * 1e3:.1f}")
               for k, v in per_image.items() for c, t in v.items()}
    report("inference", {"images_per_call": n, "classes": list(sizes), "repeats": rep, "smoke": args.smoke,
                         "note": "from preprocessed pixels through the user paths: zero-shot encode_image + scores, "
                                 "AAPEClassifier.predict_proba_pixels; per-class-list work done once, untimed"},
           figures, result)


# ------------------------------------------------------------------ 4. feature store


def bench_features(args: argparse.Namespace) -> None:
    """The offline default in feature mode, scaled up (real ViT-B/16 geometry, `tiny` with --smoke; by default
    all 16 synthetic classes): a run with a cold feature store, then a rerun (new workdir, same store). A first
    untimed run on a separate, smaller store compiles the training and evaluation programs, so the timed runs
    differ by the store."""
    from aape_jax.train import train_and_evaluate

    epochs = 1 if args.smoke else 2
    with tempfile.TemporaryDirectory() as root:
        clip_dir = make_checkpoint(os.path.join(root, "clip"), args)

        def run(tag: str, store: str, warmup: bool = False) -> float:
            c = base2new("runlocal,combine=feature", "aape")  # what experiments/aape_base2new.py runs
            c.clip = clip_dir
            c.feature_store = os.path.join(root, store)
            c.num_epochs = epochs
            if not args.smoke:
                c.dataset.synthetic_classes = args.synthetic_classes
                c.dataset.synthetic_train_per_class = 16
                c.dataset.synthetic_test_per_class = 2 if warmup else args.synthetic_test
                c.dataset.num_views = 1 if warmup else args.views
            t0 = time.perf_counter()
            train_and_evaluate(c, os.path.join(root, tag))
            return time.perf_counter() - t0

        warm = run("warmup", "store_warmup", warmup=True)
        first = run("first", "store")
        rerun = run("rerun", "store")
    result = {"rerun_speedup": _round(first / rerun)}
    figures = {"warm-up run s (separate small store, compiles)": f"{warm:.2f}",
               "first run s (cold store)": f"{first:.2f}", "rerun s (same store)": f"{rerun:.2f}"}
    report("features", {"classes": args.synthetic_classes, "views": args.views, "test_per_class": args.synthetic_test,
                        "smoke": args.smoke, "combine": "feature", "shots": 16, "epochs": epochs,
                        "geometry": "tiny" if args.smoke else "vit-b-16"}, figures, result)


# ------------------------------------------------------------------ 5. language model


def bench_lm(args: argparse.Namespace) -> None:
    """Prefill and cached greedy decoding, tokens/s, ours vs transformers' PyTorch decoder on one checkpoint."""
    from aape_jax.bench import torch_reference

    # GPT-2 small's width, heads, MLP and vocabulary with fewer layers (--lm_layers); tiny with --smoke.
    geometry = {} if args.smoke else dict(hidden_size=768, num_heads=12, num_kv_heads=12, head_dim=64,
                                          intermediate_size=3072, num_layers=args.lm_layers, vocab_size=50257,
                                          max_positions=1024)
    batch, prompt, steps = (2, 8, 4) if args.smoke else (args.lm_batch, args.lm_prompt, args.lm_new_tokens)
    with tempfile.TemporaryDirectory() as d:
        lm_tiny.write_checkpoint(d, "gpt2", seed=0, **geometry)
        loaded, ref = lm.load(d), torch_reference.LanguageModelReference(d)
    # No EOS: every row decodes all `steps` tokens on both sides (transformers: min_new_tokens).
    ours = lm.LanguageModel(loaded.params, dataclasses.replace(loaded.config, eos_token_ids=()), loaded.tokenizer)
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (batch, prompt)).astype(np.int32)
    mask = jnp.ones((batch, prompt), bool)

    # Equal outputs first: the comparison is between the same computation.
    agreement = float(np.mean(ours.generate(ids, max_new_tokens=steps) == ref.generate(ids, steps)))
    decoder = lm_generate.CachedDecoder(ours.params, lm_generate.Settings(ours.config, jnp.float32, steps, "greedy"))
    prefill = jax.jit(lambda params, embeds, mask: lm_generate.CachedDecoder(params, decoder.s).prefill(embeds, mask)[0])

    rep = args.repeats
    t_prefill_ours = timeit(lambda: prefill(ours.params, ours.embed(ids), mask).block_until_ready(), rep)
    t_prefill_ref = timeit(ref.prefill_call(ids), rep)
    t_gen_ours = timeit(lambda: ours.generate(ids, max_new_tokens=steps), rep)
    t_gen_ref = timeit(ref.generate_call(ids, steps), rep)
    # Decoding time: the whole greedy generate less its prefill, on each side.
    decode_ours = batch * steps / max(t_gen_ours - t_prefill_ours, 1e-9)
    decode_ref = batch * steps / max(t_gen_ref - t_prefill_ref, 1e-9)
    prefill_ours, prefill_ref = batch * prompt / t_prefill_ours, batch * prompt / t_prefill_ref
    result = {"prefill_vs_torch": _round(prefill_ours / prefill_ref), "decode_vs_torch": _round(decode_ours / decode_ref),
              "prefill_tokens_per_s": _round(prefill_ours), "decode_tokens_per_s": _round(decode_ours),
              "greedy_agreement": _round(agreement)}
    figures = {
        "greedy tokens equal to the reference's": f"{agreement:.1%}",
        "prefill tokens/s (ours, reference)": f"{prefill_ours:.0f}, {prefill_ref:.0f}",
        "cached decoding tokens/s (ours, reference)": f"{decode_ours:.1f}, {decode_ref:.1f}",
        "greedy generate s (ours, reference)": f"{t_gen_ours:.3f}, {t_gen_ref:.3f}",
    }
    c = ours.config
    report("lm", {"family": "gpt2", "hidden_size": c.hidden_size, "layers": c.num_layers, "heads": c.num_heads,
                  "vocab_size": c.vocab_size, "batch": batch, "prompt_tokens": prompt, "new_tokens": steps,
                  "repeats": rep, "smoke": args.smoke}, figures, result, reference=torch_reference.machine_info())


# ------------------------------------------------------------------ entry point


BENCHMARKS = {"towers": bench_towers, "train_step": bench_train_step, "inference": bench_inference,
              "features": bench_features, "lm": bench_lm, "_step_memory": step_memory}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aape_jax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--smoke", action="store_true", help="tiny geometry, one repeat: checks the code runs")
    parser.add_argument("--tokenizer_dir", default=None,
                        help=f"directory with the real CLIP vocab.json and merges.txt (default: ${TOKENIZER_ENV}, "
                             "else aape_jax.toyworld.default_tokenizer_dir()'s known places; unused with --smoke)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median)")
    parser.add_argument("--images", type=int, default=8, help="towers/inference: images per call")
    parser.add_argument("--prompts", type=int, default=64, help="towers: prompts per call")
    parser.add_argument("--classes", type=int, default=50, help="train_step: C")
    parser.add_argument("--memory_classes", type=int, default=100, help="train_step: C of the memory measurement")
    parser.add_argument("--full", action="store_true", help="inference: also the plain prefix path at C=1000")
    parser.add_argument("--synthetic_classes", type=int, default=16, help="features: synthetic classes (at most 16)")
    parser.add_argument("--synthetic_test", type=int, default=8, help="features: test images per class")
    parser.add_argument("--views", type=int, default=4, help="features: augmented views per training image")
    parser.add_argument("--lm_layers", type=int, default=4, help="lm: decoder blocks of the GPT-2-small-wide model")
    parser.add_argument("--lm_batch", type=int, default=4, help="lm: prompts per call")
    parser.add_argument("--lm_prompt", type=int, default=128, help="lm: prompt tokens")
    parser.add_argument("--lm_new_tokens", type=int, default=32, help="lm: greedy tokens generated")
    parser.add_argument("--token_position", default="suffix", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    elif args.name != "lm":  # the real CLIP vocabulary, found (or a clear error) before any slow work
        try:
            args.tokenizer_dir = resolve_tokenizer_dir(args.tokenizer_dir)
        except ConfigError as e:
            parser.error(f"{e} ({e.hint})" if e.hint else str(e))
    BENCHMARKS[args.name](args)
