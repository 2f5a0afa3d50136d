r"""Benchmarks: ours vs transformers' PyTorch CLIP (and decoder) on the same weights, in one process.

    python -m aape_jax.bench towers       # image/text tower throughput, MFU of the image tower
    python -m aape_jax.bench train_step   # training images/s, B=32, C=50: token vs PyTorch, feature vs token
    python -m aape_jax.bench inference    # per-image classification cost, C = 10, 100, 1000
    python -m aape_jax.bench features     # base-to-new run: cold feature store vs rerun
    python -m aape_jax.bench lm           # decoder prefill / cached decoding tokens/s vs transformers' GPT-2
    python -m aape_jax.bench pipeline     # JPEG decode + preprocess images/s (0, 1, 2 threads); whole feature
                                          # extraction images/s vs CLIPImageProcessor + DataLoader + PyTorch CLIP
    python -m aape_jax.bench accelerator  # towers, train_step, inference, pipeline in bf16 on the default JAX
                                          # device (GPU/TPU), one JSON line of all their figures
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
there is one. `--dtype bfloat16` runs our CLIP in bf16 (`towers`, `train_step`,
`inference`, `pipeline`; PyTorch stays fp32); `accelerator` sets it.

`pipeline` writes `--pipeline_images` photo-like JPEGs (300-800 px on the long
side, random aspect ratios, smooth gradients and blobs plus noise;
deterministic) to a temporary directory and times ONE pass over them per
configuration (a pass is long enough): (a) decoding + the eval transform alone
(`aape_jax.data.pipeline.ViewBatches`) with 0 (in the calling thread), 1 and 2
threads: `worker_scaling` = 2 threads / 1 thread; beside them the same work on
2 processes (`decode_images_per_s_processes2`, the alternative the threads were
chosen over); (b) the whole extraction,
`feature_store.extract_image_features` with our `encode_image` (compilation
excluded) and `--pipeline_workers` threads: `encoder_busy_fraction` = time
inside `encode` calls (blocking) / the extraction's wall time; (c) the same
with transformers' `CLIPImageProcessor.from_pretrained` in a torch
`DataLoader(num_workers=--pipeline_workers)` and the PyTorch CLIP:
`extraction_vs_torch` = (b) / (c) images/s.

`accelerator` runs `towers`, `train_step`, `inference` and `pipeline`
in-process with `--dtype bfloat16` (unless given) on JAX's default device,
printing each one's report, then one JSON line of all their results, keys
prefixed by benchmark (`towers.image_ratio`, `pipeline.encoder_busy_fraction`,
...). Without --smoke it refuses to run on a CPU.

This module is the JAX side; the PyTorch side (reference CLIP, the PyTorch
AAPE step, the reference decoder) is `aape_jax.bench.torch_reference`,
imported only by the benchmarks that compare against it (`towers`,
`train_step`, `lm`, `pipeline`, `accelerator`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
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
import PIL.Image

from aape_jax import clip as clip_lib
from aape_jax import lm
from aape_jax import toyworld, trainer, zeroshot
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.preprocess import ImageTransform, eval_transform
from aape_jax.clip.tiny import write_checkpoint
from aape_jax.configs.classification import base2new
from aape_jax.data.feature_store import extract_image_features
from aape_jax.data.pipeline import ViewBatches, default_workers
from aape_jax.data.text_features import class_text
from aape_jax.data.types import Example
from aape_jax.errors import ConfigError
from aape_jax.inference import AAPEClassifier
from aape_jax.lm import generate as lm_generate
from aape_jax.lm import tiny as lm_tiny
from aape_jax.models.aape import AAPE, AAPEConfig, init_params
from aape_jax.models.heads import TEXT_MEMORY_GB, make_head
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


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(args: argparse.Namespace) -> str:
    """Our CLIP's compute dtype: `--dtype`, float32 when not given."""
    return getattr(args, "dtype", None) or "float32"


def load_clip(path: str, args: argparse.Namespace) -> FrozenCLIP:
    """Our CLIP from `path` in the compute dtype `--dtype` (parameters stay float32)."""
    return clip_lib.load(path, dtype=DTYPES[compute_dtype(args)])


def _dtype_config(args: argparse.Namespace) -> dict:
    """The config line's dtype entry: only when not the default float32 (so fp32 runs print as before)."""
    dtype = compute_dtype(args)
    return {} if dtype == "float32" else {"dtype": dtype}


@dataclasses.dataclass
class Report:
    """What a benchmark measured; `main` prints it (`report`), `accelerator` collects several.

    Attributes:
      name: the benchmark's name.
      config: its configuration (the config line).
      figures: human-readable figures, one line each.
      result: the JSON line (the figures a script reads).
      reference: the PyTorch side's machine info, when it compares against PyTorch.
    """

    name: str
    config: dict
    figures: dict
    result: dict
    reference: dict | None = None

    def print(self) -> None:
        report(self.name, self.config, self.figures, self.result, self.reference)


def report(name: str, config: dict, figures: dict, result: dict, reference: dict | None = None) -> None:
    print(f"== bench {name}")
    print("config:", json.dumps(config))
    print("machine:", json.dumps(machine_info(reference)))
    for k, v in figures.items():
        print(f"  {k}: {v}")
    print(json.dumps(result), flush=True)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def matmul_peak(size: int, repeats: int, dtype: Any = jnp.float32) -> dict[str, float]:
    """Measured matmul FLOP/s of this machine, with JAX in `dtype` and with PyTorch in fp32
    ([size, size] @ [size, size])."""
    from aape_jax.bench import torch_reference

    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)).astype(np.float32), dtype=dtype)
    mm = jax.jit(lambda x, y: x @ y)
    t_jax = timeit(lambda: mm(a, a).block_until_ready(), repeats)
    t_torch = timeit(torch_reference.matmul_call(size), repeats)
    flops = 2 * size**3
    return {"jax": flops / t_jax, "torch": flops / t_torch}


# ------------------------------------------------------------------ 1. towers


def bench_towers(args: argparse.Namespace) -> Report:
    from aape_jax.bench import torch_reference

    with tempfile.TemporaryDirectory() as d:
        path = make_checkpoint(d, args)
        ours, ref = load_clip(path, args), torch_reference.load_reference(path)
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
    # Our jitted text tower on exactly the reference's positions: the trimmed ids (up to the longest
    # prompt's EOT; `encode_text` rounds that up to a multiple of 8) and all 77.
    tower = jax.jit(lambda params, ids: ours.module.apply({"params": params}, ids, method="encode_text"))
    ids_trimmed_device, ids77_device = jnp.asarray(ids77[:, :trimmed]), jnp.asarray(ids77)
    err_txt_trimmed = float(np.abs(np.asarray(tower(ours.params, ids_trimmed_device)) - ref_txt).max())

    rep = args.repeats
    t_img_ours = timeit(lambda: ours.encode_image(pixels), rep)
    t_img_ref = timeit(towers.image_call(), rep)
    t_txt_ours = timeit(lambda: ours.encode_text(ids77), rep)
    t_txt_ref = timeit(towers.text_call(), rep)
    t_txt_ref_trim = timeit(towers.text_call(trimmed=True), rep)
    t_txt_ours_trimmed = timeit(lambda: tower(ours.params, ids_trimmed_device).block_until_ready(), rep)
    t_txt_ours77 = timeit(lambda: tower(ours.params, ids77_device).block_until_ready(), rep)

    # Achieved FLOP/s of our image tower (XLA's own FLOP count of the compiled program) / measured matmul peak.
    # The same program `FrozenCLIP.encode_image` runs on this batch (its bucket of n_img=8 rows is n_img).
    encode_image = jax.jit(lambda params, x: ours.module.apply({"params": params}, x, method="encode_image"))
    cost = encode_image.lower(ours.params, jnp.asarray(pixels)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_img = float(cost["flops"]) / n_img
    peak = matmul_peak(512 if args.smoke else 2048, rep, DTYPES[compute_dtype(args)])
    ips_ours, ips_ref = n_img / t_img_ours, n_img / t_img_ref
    pps_ours, pps_ref = n_txt / t_txt_ours, n_txt / t_txt_ref
    result = {
        "image_ratio": _round(ips_ours / ips_ref),
        "text_ratio": _round(pps_ours / pps_ref),
        "mfu_image": _round(flops_img * ips_ours / max(peak.values())),
        "text_ratio_vs_trimmed_reference": _round(pps_ours / (n_txt / t_txt_ref_trim)),
        # Both towers on the same ids at the same positions: trimmed to the longest prompt, and all 77.
        "text_equal_length_ratio": _round(t_txt_ref_trim / t_txt_ours_trimmed),
        "text_equal_length_ratio_77": _round(t_txt_ref / t_txt_ours77),
    }
    figures = {
        "max |ours - reference| image / text features": f"{err_img:.2e} / {err_txt:.2e}",
        "image tower images/s (ours, reference)": f"{ips_ours:.3f}, {ips_ref:.3f}",
        "text tower prompts/s (ours, reference at 77 positions)": f"{pps_ours:.2f}, {pps_ref:.2f}",
        f"text tower prompts/s, both at {trimmed} positions (ours jitted directly, reference)":
            f"{n_txt / t_txt_ours_trimmed:.2f}, {n_txt / t_txt_ref_trim:.2f} "
            f"(max |ours - reference| {err_txt_trimmed:.2e})",
        "text tower prompts/s, both at 77 positions": f"{n_txt / t_txt_ours77:.2f}, {pps_ref:.2f}",
        "image tower GFLOP/image (XLA cost analysis)": f"{flops_img / 1e9:.2f}",
        ("fp32 matmul peak GFLOP/s (jax, torch)" if compute_dtype(args) == "float32" else
         f"matmul peak GFLOP/s (jax {compute_dtype(args)}, torch fp32)"):
            f"{peak['jax'] / 1e9:.1f}, {peak['torch'] / 1e9:.1f}",
        "image tower achieved GFLOP/s": f"{flops_img * ips_ours / 1e9:.1f}",
    }
    return Report("towers", {"images": n_img, "prompts": n_txt, "repeats": rep, "smoke": args.smoke,
                             "geometry": "tiny" if args.smoke else "vit-b-16", **_dtype_config(args)}, figures,
                  result, reference=torch_reference.machine_info())


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


def bench_train_step(args: argparse.Namespace) -> Report:
    """Training images/s of our steps and PyTorch's; for the `prefix` pair also both steps' memory (ours at
    the default `model.text_memory_gb`), so that the speed ratio can be read at equal memory."""
    from aape_jax.bench import torch_reference

    batch, classes = (8, 5) if args.smoke else (32, args.classes)
    rep = args.repeats
    with tempfile.TemporaryDirectory() as d:
        path = make_checkpoint(d, args)
        clip, ref = load_clip(path, args), torch_reference.load_reference(path)
    secs, prefix_gb = {}, None
    for name, combine, position in (("token_prefix", "token", "prefix"), ("token_suffix", "token", "suffix"),
                                    ("feature", "feature", "prefix")):
        run, jitted, step_args = make_our_step(clip, combine, position, batch, classes)
        secs[name] = timeit(run, rep if combine == "token" else max(rep, 20))
        if name == "token_prefix":
            prefix_gb = _xla_gb(jitted.lower(*step_args).compile().memory_analysis())
    for position in ("prefix", "suffix"):
        secs[f"torch_{position}"] = timeit(_torch_step(clip, ref, position, batch, classes), rep)
    ips = {k: batch / v for k, v in secs.items()}
    # PyTorch's step memory: the resident-set increase of a warm step, in a fresh process (our step's
    # XLA buffers stay allocated between calls, so for ours XLA's buffer assignment is the measure).
    torch_memory = {} if args.smoke else step_memory_subprocess(args, "prefix", batch, classes, torch=True)
    memory = {} if args.smoke else {position: step_memory_subprocess(args, position, batch, args.memory_classes)
                                    for position in ("prefix", "suffix")}
    result = {
        "token_vs_torch": _round(ips["token_suffix"] / ips["torch_suffix"]),
        "feature_vs_token": _round(ips["feature"] / ips["token_suffix"]),
        "token_prefix_vs_torch": _round(ips["token_prefix"] / ips["torch_prefix"]),
        "feature_vs_token_prefix": _round(ips["feature"] / ips["token_prefix"]),
        # The prefix pair's memory at B, C of the timing: ours (XLA temporaries + arguments), PyTorch's (RSS).
        "token_prefix_memory_gb": prefix_gb,
        "torch_prefix_memory_gb": torch_memory.get("peak_rss_increase_gb"),
        # XLA's buffers of the compiled step at --memory_classes; RSS figures are printed above.
        "peak_memory_gb_token_suffix": _step_gb(memory.get("suffix", {})),
        "peak_memory_gb_token_prefix": _step_gb(memory.get("prefix", {})),
    }
    figures = {f"{k} training images/s": f"{v:.3f}" for k, v in ips.items()}
    memory_key = f"prefix step memory, B={batch} C={classes}: ours (XLA, budget {TEXT_MEMORY_GB} GB), PyTorch (RSS)"
    figures[memory_key] = f"{prefix_gb} GB, {torch_memory.get('peak_rss_increase_gb')} GB"
    for position, m in memory.items():
        figures[f"memory, token {position} step, B={batch} C={args.memory_classes}"] = json.dumps(m)
    if torch_memory:
        figures[f"memory, PyTorch prefix step, B={batch} C={classes}"] = json.dumps(torch_memory)
    return Report("train_step", {"batch": batch, "classes": classes, "repeats": rep, "smoke": args.smoke,
                                 "template": TEMPLATE, "num_tokens": 1, **_dtype_config(args)}, figures, result,
                  reference=torch_reference.machine_info())


def _xla_gb(mem: Any) -> float | None:
    """XLA's temporaries + arguments of a compiled program, GB (None where the backend reports none)."""
    return None if mem is None else round((mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**30, 3)


def _torch_step(clip: FrozenCLIP, ref: Any, position: str, batch: int, classes: int) -> Callable[[], Any]:
    """PyTorch's AAPE step on the inputs our step gets (`_step_inputs`), as a blocking call."""
    from aape_jax.bench import torch_reference

    b, table = _step_inputs(clip, batch, classes)
    labels = np.asarray(b["labels"])
    feats = torch_reference.to_device(np.asarray(b["features"]))
    t_labels = torch_reference.to_device(labels.astype(np.int64))
    prompts = torch_reference.to_device(table[labels])  # [B, M, D]
    ct = class_text(clip, TEMPLATE, class_names(classes), 1)
    step = torch_reference.TorchAAPE(ref, clip, ct, position, _aggregator_heads(clip), _generator_hidden(clip))
    return lambda: step.step(feats, t_labels, prompts)


def step_memory(args: argparse.Namespace) -> None:
    """(subprocess) Peak memory of one token-mode step (ours, or PyTorch's with `--torch_step`), two ways.

    * XLA's own buffer assignment of the compiled step (`memory_analysis`):
      temporaries (activations kept for the backward pass, workspaces) and arguments.
    * The process's resident-set peak (VmHWM) while a warm step runs: the step
      runs once (compilation), the kernel's peak counter is reset
      (`/proc/self/clear_refs` <- 5), the step runs again, and the new peak minus
      the resident set just before it is the step's own increase.
    """
    with tempfile.TemporaryDirectory() as d:
        path = make_checkpoint(d, args)
        clip = load_clip(path, args)
        if args.torch_step:
            from aape_jax.bench import torch_reference

            ref = torch_reference.load_reference(path)
    if args.torch_step:  # PyTorch's step instead: no XLA buffers to report
        run, mem = _torch_step(clip, ref, args.token_position, args.batch, args.classes), None
    else:
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


def step_memory_subprocess(args: argparse.Namespace, position: str, batch: int, classes: int,
                           torch: bool = False) -> dict:
    """`step_memory` of our step (or PyTorch's, `torch`) in a fresh process: its JSON line as a dict."""
    cmd = [sys.executable, "-m", "aape_jax.bench", "_step_memory", "--token_position", position, "--batch",
           str(batch), "--classes", str(classes), "--tokenizer_dir", args.tokenizer_dir, "--dtype", compute_dtype(args),
           *(["--torch_step"] if torch else [])]
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


def bench_inference(args: argparse.Namespace) -> Report:
    """Per-image cost of the user paths from preprocessed pixels: zero-shot CLIP (`zeroshot.predict`'s
    `encode_image` + `scores`) and `AAPEClassifier.predict_proba_pixels`, suffix and prefix.

    Each side's per-class-list work (zero-shot's text features; the classifier's
    cached template ids and prefix cache) is done once: before timing, or in the
    untimed warm-up call that also compiles.
    """
    with tempfile.TemporaryDirectory() as d:
        clip = load_clip(make_checkpoint(d, args), args)
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
    return Report("inference", {"images_per_call": n, "classes": list(sizes), "repeats": rep, "smoke": args.smoke,
                                "note": "from preprocessed pixels through the user paths: zero-shot encode_image + "
                                        "scores, AAPEClassifier.predict_proba_pixels; per-class-list work done once, "
                                        "untimed", **_dtype_config(args)},
                  figures, result)


# ------------------------------------------------------------------ 4. feature store


def bench_features(args: argparse.Namespace) -> Report:
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
    return Report("features", {"classes": args.synthetic_classes, "views": args.views,
                               "test_per_class": args.synthetic_test, "smoke": args.smoke, "combine": "feature",
                               "shots": 16, "epochs": epochs, "geometry": "tiny" if args.smoke else "vit-b-16"},
                  figures, result)


# ------------------------------------------------------------------ 5. language model


def bench_lm(args: argparse.Namespace) -> Report:
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
    return Report("lm", {"family": "gpt2", "hidden_size": c.hidden_size, "layers": c.num_layers,
                         "heads": c.num_heads, "vocab_size": c.vocab_size, "batch": batch, "prompt_tokens": prompt,
                         "new_tokens": steps, "repeats": rep, "smoke": args.smoke}, figures, result,
                  reference=torch_reference.machine_info())


# ------------------------------------------------------------------ 6. input pipeline


def synthetic_photo(rng: np.random.Generator, long_side: tuple[int, int]) -> np.ndarray:
    """A photo-like uint8 [H, W, 3] image: long side in `long_side` (inclusive), aspect ratio 1-2 (landscape
    or portrait), a smooth colour gradient with 3-8 soft blobs, plus sensor-like noise (so it compresses
    like a photo, about 2 bits per pixel as a quality 80-95 JPEG, not like a flat test pattern)."""
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = max(1, round(long / rng.uniform(1.0, 2.0)))
    h, w = (long, short) if rng.random() < 0.35 else (short, long)
    gh, gw = max(2, h // 16), max(2, w // 16)  # the smooth part is drawn at 1/16 and upsampled
    yy, xx = np.meshgrid(np.linspace(0, 1, gh), np.linspace(0, 1, gw), indexing="ij")  # [gh, gw]
    field = (rng.uniform(40, 200, 3) + rng.uniform(-80, 80, 3) * yy[..., None]
             + rng.uniform(-80, 80, 3) * xx[..., None])  # [gh, gw, 3]
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, 1, 2)
        r = rng.uniform(0.05, 0.35)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-120, 120, 3)
    small = PIL.Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    img = np.asarray(small.resize((w, h), PIL.Image.Resampling.BICUBIC), np.float32)  # [h, w, 3]
    # Gaussian-like noise through a lookup of 256 sorted normal draws (uint8 indices: far cheaper than normals).
    lut = np.sort(rng.standard_normal(256)).astype(np.float32)
    img = (img + lut[rng.integers(0, 256, (h, w, 1), dtype=np.uint8)] * np.float32(rng.uniform(3, 10))
           + lut[rng.integers(0, 256, (h, w, 3), dtype=np.uint8)] * np.float32(3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_photos(directory: str, n: int, seed: int, long_side: tuple[int, int] = (300, 800)) -> list[str]:
    """`n` JPEG files `directory/00000.jpg`, ... of `synthetic_photo`s; image i depends only on (seed, i)."""

    def one(i: int) -> str:
        rng = np.random.default_rng([seed, i])
        path = os.path.join(directory, f"{i:05d}.jpg")
        PIL.Image.fromarray(synthetic_photo(rng, long_side)).save(path, "JPEG", quality=int(rng.integers(80, 96)))
        return path

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(n)))


class BusyEncoder:
    """`encode` with the wall time spent inside its calls (each blocks until its features are on the host).

    Attributes:
      encode: pixels [n, R, R, 3] -> features [n, D].
      busy_s: seconds inside calls since the last `reset`.
      calls: calls since the last `reset`.
    """

    def __init__(self, encode: Callable[[np.ndarray], Any]):
        self.encode, self.busy_s, self.calls = encode, 0.0, 0

    def reset(self) -> None:
        self.busy_s, self.calls = 0.0, 0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(self.encode(pixels)))
        self.busy_s += time.perf_counter() - t0
        self.calls += 1
        return out


def process_decode_ips(files: list[str], transform: ImageTransform, workers: int) -> float:
    """images/s of the same per-image work as a decode thread (decode, eval transform, normalisation) on a
    pool of `workers` processes: the alternative to threads, measured beside them. The processes are
    started and have imported the transform before the timed pass; forkserver, as forking a process
    that runs XLA's threads is unsafe; the pixels come back pickled, one image per task, in chunks."""
    task = functools.partial(eval_transform, transform=transform)
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(task, files[: 4 * workers]))  # every worker started and warm
        secs, n = _timed(lambda: sum(len(p) for p in pool.map(task, files, chunksize=8)))
    return n / secs


def pipeline_ratios(decode_ips: dict[int, float], ours_ips: float, torch_ips: float, busy_s: float,
                    total_s: float) -> dict[str, float]:
    """`bench pipeline`'s headline figures from its measurements: decode images/s by thread count, the two
    extractions' images/s, and our extraction's time inside `encode` (`busy_s`) and wall time (`total_s`)."""
    return {"worker_scaling": _round(decode_ips[2] / decode_ips[1]),
            "extraction_vs_torch": _round(ours_ips / torch_ips),
            "encoder_busy_fraction": _round(busy_s / total_s)}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall s, result) of one call of `fn`."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_pipeline(args: argparse.Namespace) -> Report:
    """Input pipeline: decoding + preprocessing alone, then the whole image feature extraction, ours vs
    transformers' (module docstring). One timed pass per configuration: a pass over `--pipeline_images`
    files is long enough; our encoder is compiled (both batch buckets) before its pass."""
    from aape_jax.bench import torch_reference

    n = args.pipeline_images if not args.smoke else min(args.pipeline_images, 48)
    long_side = (48, 128) if args.smoke else (300, 800)
    batch = 8 if args.smoke else args.pipeline_batch
    workers = args.pipeline_workers if args.pipeline_workers is not None else 2
    with tempfile.TemporaryDirectory() as root:
        path = make_checkpoint(os.path.join(root, "clip"), args)
        clip, ref = load_clip(path, args), torch_reference.load_reference(path)
        photos = os.path.join(root, "photos")
        os.makedirs(photos)
        t_write, files = _timed(lambda: write_photos(photos, n, seed=0, long_side=long_side))
        kb = [os.path.getsize(f) / 1e3 for f in files]
        examples = [Example(image=f, label=0, key=os.path.basename(f)) for f in files]
        transform = clip.transform  # for vit-b-16: ImageTransform.openai(224), OpenAI CLIP's eval transform
        jobs = [(i, 0) for i in range(n)]
        starts = list(range(0, n, batch))

        # (a) decode + preprocess alone.
        decode_ips = {}
        for w in sorted({0, 1, 2, workers}):
            source = ViewBatches(examples, jobs, transform, augment=False, seed=0, batch_size=batch, workers=w)
            secs, _ = _timed(lambda source=source: sum(len(p) for _, p in source.batches(starts)))
            decode_ips[w] = n / secs
        process_ips = process_decode_ips(files, transform, 2)

        # (b) our whole extraction; the encoder compiled first (the full batch's bucket and the last one's).
        encode = BusyEncoder(clip.encode_image)
        r = clip.config.vision.image_size
        for rows in {batch, n % batch} - {0}:
            encode(np.zeros((rows, r, r, 3), np.float32))
        encode.reset()
        t_ours, ours = _timed(lambda: extract_image_features(
            encode, examples, transform, views=1, seed=0, augment=False, batch_size=batch, workers=workers,
            desc="bench pipeline"))
        busy_s, calls = encode.busy_s, encode.calls

        # (c) transformers' image processor in a torch DataLoader, then the PyTorch CLIP.
        extraction = torch_reference.ImageExtraction(ref, path, files, batch_size=batch, workers=workers)
        extraction.warm_up()
        t_ref, (theirs, ref_busy_s) = _timed(extraction.run)
    ours = ours[:, 0]  # [N, D]
    cos = np.sum(ours * theirs, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    ours_ips, ref_ips = n / t_ours, n / t_ref
    result = {
        **pipeline_ratios(decode_ips, ours_ips, ref_ips, busy_s, t_ours),
        "decode_images_per_s_workers0": _round(decode_ips[0]),
        "decode_images_per_s_workers1": _round(decode_ips[1]),
        "decode_images_per_s_workers2": _round(decode_ips[2]),
        "decode_images_per_s_processes2": _round(process_ips),
        "extraction_images_per_s": _round(ours_ips),
        "torch_extraction_images_per_s": _round(ref_ips),
        "torch_encoder_busy_fraction": _round(ref_busy_s / t_ref),
        "images": n, "extraction_s": _round(t_ours), "encoder_busy_s": _round(busy_s),
    }
    figures = {
        "JPEG files (written in s)": f"{n} ({t_write:.1f} s), {np.mean(kb):.1f} KB mean, {min(kb):.1f}-{max(kb):.1f} KB",
        "eval transform": f"resize shorter side to {transform.resize}, centre crop {transform.crop_size}"
                          + (" (= ImageTransform.openai(224))" if transform == ImageTransform.openai(224) else ""),
        **{f"decode + preprocess images/s, {w} threads" + (" (in the calling thread)" if w == 0 else ""):
           f"{ips:.1f}" for w, ips in decode_ips.items()},
        "decode + preprocess images/s, 2 processes (the alternative to threads)": f"{process_ips:.1f}",
        f"extraction images/s (ours, {workers} decode threads)": f"{ours_ips:.2f}",
        "ours: time inside encode / wall time": f"{busy_s:.2f} / {t_ours:.2f} s ({calls} calls)",
        f"extraction images/s (reference: {extraction.processor_name}, DataLoader num_workers={workers})":
            f"{ref_ips:.2f}",
        "reference: time inside the model / wall time": f"{ref_busy_s:.2f} / {t_ref:.2f} s",
        "min cosine(ours, reference) image features": f"{float(cos.min()):.5f}",
    }
    config = {"images": n, "long_side_px": list(long_side), "batch_size": batch, "workers": workers,
              "timed_passes": 1, "note": "one timed pass per configuration (a pass over all images is long "
              "enough); our encoder compiled before its pass, the reference's warmed up by one batch",
              "smoke": args.smoke, "geometry": "tiny" if args.smoke else "vit-b-16", **_dtype_config(args)}
    return Report("pipeline", config, figures, result, reference=torch_reference.machine_info())


# ------------------------------------------------------------------ 7. accelerator

ACCELERATOR_BENCHMARKS = ("towers", "train_step", "inference", "pipeline")


def prefixed(results: dict[str, dict]) -> dict[str, Any]:
    """{benchmark: its JSON result} -> one flat dict, keys prefixed by benchmark (`towers.image_ratio`)."""
    return {f"{name}.{k}": v for name, result in results.items() for k, v in result.items()}


def bench_accelerator(args: argparse.Namespace) -> Report:
    """`towers`, `train_step`, `inference` and `pipeline` in this process, bf16 (unless `--dtype`) on JAX's
    default device; each one's report is printed as it finishes, then the combined one."""
    from aape_jax.bench import torch_reference

    sub = argparse.Namespace(**vars(args))
    sub.dtype = args.dtype or "bfloat16"
    if sub.pipeline_workers is None:
        sub.pipeline_workers = default_workers()  # the extraction's own default: one decode thread per core
    results, wall = {}, {}
    for name in ACCELERATOR_BENCHMARKS:
        wall[name], r = _timed(lambda name=name: BENCHMARKS[name](sub))
        r.print()
        results[name] = r.result
    dev = jax.devices()[0]
    result = {"dtype": sub.dtype, "jax_device": f"{dev.platform}:{dev.device_kind}", **prefixed(results)}
    figures = {f"{name} wall s": f"{s:.1f}" for name, s in wall.items()}
    figures["pipeline encoder busy fraction (target >= 0.9 on an accelerator)"] = (
        result["pipeline.encoder_busy_fraction"])
    return Report("accelerator", {"benchmarks": list(ACCELERATOR_BENCHMARKS), "dtype": sub.dtype,
                                  "pipeline_workers": sub.pipeline_workers, "repeats": args.repeats,
                                  "smoke": args.smoke}, figures, result, reference=torch_reference.machine_info())


# ------------------------------------------------------------------ entry point


BENCHMARKS = {"towers": bench_towers, "train_step": bench_train_step, "inference": bench_inference,
              "features": bench_features, "lm": bench_lm, "pipeline": bench_pipeline,
              "accelerator": bench_accelerator, "_step_memory": step_memory}


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
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="compute dtype of our CLIP in towers/train_step/inference/pipeline (default float32; "
                             "accelerator: bfloat16); PyTorch stays fp32")
    parser.add_argument("--pipeline_images", type=int, default=2000, help="pipeline: JPEG files (smoke: at most 48)")
    parser.add_argument("--pipeline_batch", type=int, default=64, help="pipeline: images per encoder call")
    parser.add_argument("--pipeline_workers", type=int, default=None,
                        help="pipeline: decode threads of the extractions, ours and the DataLoader's workers "
                             "(default 2; accelerator: one per core)")
    parser.add_argument("--token_position", default="suffix", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--torch_step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.name == "accelerator" and not args.smoke and jax.default_backend() == "cpu":
        parser.error("accelerator: JAX's default device is a CPU; it is meant for a GPU or TPU "
                     "(--smoke checks the code on a CPU; the single benchmarks run on a CPU as they are)")
    if args.smoke:
        args.repeats = 1
    elif args.name != "lm":  # the real CLIP vocabulary, found (or a clear error) before any slow work
        try:
            args.tokenizer_dir = resolve_tokenizer_dir(args.tokenizer_dir)
        except ConfigError as e:
            parser.error(f"{e} ({e.hint})" if e.hint else str(e))
    out = BENCHMARKS[args.name](args)
    if out is not None:  # `_step_memory` prints its own line
        out.print()
