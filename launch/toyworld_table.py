#!/usr/bin/env python3
"""Every method in the toy world: learning-rate selection on validation, the method table, the scaling curves.

    python launch/toyworld_table.py select --runs RUNS          # lr grid on the validation split
    python launch/toyworld_table.py table  --runs RUNS [--seeds 1,2,3]
    python launch/toyworld_table.py curves --runs RUNS [--seeds 1,2,3]

Run from the repository root. All runs go through `aape_jax.train.train_and_evaluate` in this
process (one JAX start-up), share one feature store (RUNS/feature_store) and the toy world's cached
CLIP, and each writes its workdir `RUNS/<split>/<row>/<task>/seed<S>`; a finished run (its
metrics.json exists) is read, not rerun, so an interrupted command continues where it stopped.
RUNS may be a local folder or a Cloud Storage one (`gs://BUCKET/...`, `aape_jax.storage`).

* `select`: every trained method (linear probe, CoOp, CoCoOp, KgCoOp, AAPE) with each learning rate
  of `LR_GRID` (the same four for all), seed 1, both tasks, scored on the base classes of the
  validation split; prints, per method, the rate with the best mean over both tasks, as the dict
  that `aape_jax/configs/classification.py` keeps in `TOY_LEARNING_RATES` (AAPE's variants use AAPE's).
* `table`: the rows of `ROWS` on both tasks over the seeds, on the test split; writes
  RUNS/toyworld_table.md (Base / New / H, mean ± std) and RUNS/toyworld_h.png.
* `curves`: H against shots per class (1, 2, 4, 8, 16) for AAPE, CoOp and CuPL, and H against
  descriptions per class (1, 2, 4, 8, all) for AAPE and CuPL (CoOp uses none: its 16-shot H is
  drawn flat); writes RUNS/toyworld_curves.md and RUNS/toyworld_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from aape_jax import atomic, storage  # noqa: E402
from aape_jax.configs import classification  # noqa: E402
from aape_jax.data import toyworld as world  # noqa: E402

LR_GRID = (0.002, 0.01, 0.05, 0.2)
TRAINED = ("linear_probe", "coop", "cocoop", "kgcoop", "aape")
SHOTS = (1, 2, 4, 8, 16)
DESCRIPTIONS = (1, 2, 4, 8, 0)  # 0: all of a class's descriptions


# Row label -> (method, config fields). AAPE rows differ from "aape_prefix" only where named.
AAPE_TOKEN = {"model.combine": "token", "model.token_position": "prefix"}
ROWS: dict[str, tuple[str, dict]] = {
    "zeroshot_clip": ("zeroshot_clip", {"baseline.templates": "single"}),
    "zeroshot_clip_ensemble": ("zeroshot_clip", {"baseline.templates": "ensemble"}),
    "cupl": ("cupl", {}),
    "linear_probe": ("linear_probe", {}),
    "coop": ("coop", {}),
    "cocoop": ("cocoop", {}),
    "kgcoop": ("kgcoop", {}),
    "aape_feature": ("aape", {"model.combine": "feature"}),
    "aape_prefix": ("aape", AAPE_TOKEN),
    "aape_suffix": ("aape", {**AAPE_TOKEN, "model.token_position": "suffix"}),
    "aape_lambda0": ("aape", {**AAPE_TOKEN, "loss.distill_weight": 0.0}),
    "aape_agg_mean": ("aape", {**AAPE_TOKEN, "model.aggregator": "mean"}),
    "aape_agg_random": ("aape", {**AAPE_TOKEN, "model.aggregator": "random"}),
    "aape_agg_mlp": ("aape", {**AAPE_TOKEN, "model.aggregator": "mlp"}),
}


def make_config(row: str, task: str, seed: int, runs: str, split: str, lr: float | None = None,
                shots: int = 16, descriptions: int = 0) -> ml_collections.ConfigDict:
    method, fields = ROWS[row]
    config = classification.base2new(f"toyworld,dataset={task},seed={seed},shots={shots}", method)
    config.update_from_flattened_dict(fields)
    if lr is not None:
        config.optim.learning_rate = lr
    config.prompts.max_per_class = descriptions
    # At 1 and 2 shots there are fewer base images (12 classes x shots) than a batch: one batch per epoch.
    config.batch_size = min(config.batch_size, shots * len(world.TASK_CLASSES[task]) // 2)
    config.evaluate_split = split
    config.report_zeroshot = False
    config.feature_store = os.path.join(runs, "feature_store")
    return config


def run(row: str, task: str, seed: int, runs: str, split: str = "test", tag: str = "", **kwargs) -> dict:
    """One run's metrics, trained now unless its metrics.json exists."""
    from aape_jax import train

    workdir = os.path.join(runs, split + tag, row, task, f"seed{seed}")
    path = storage.path(workdir) / "metrics.json"
    if path.is_file():
        return json.loads(storage.read_text(path))
    print(f"--- {split}{tag} {row} {task} seed {seed} {kwargs}", flush=True)
    return train.train_and_evaluate(make_config(row, task, seed, runs, split, **kwargs), workdir)


def select(args: argparse.Namespace) -> dict[str, float]:
    chosen = {}
    for method in TRAINED:
        row = "aape_prefix" if method == "aape" else method
        scores = {lr: np.mean([run(row, task, 1, args.runs, "val", f"_lr{lr}", lr=lr)["base_acc"]
                               for task in world.TASKS]) for lr in LR_GRID}
        chosen[method] = max(LR_GRID, key=lambda lr: (scores[lr], -lr))  # ties: the smaller rate
        print(f"{method}: mean base val accuracy per lr {({lr: round(float(v), 2) for lr, v in scores.items()})}"
              f" -> {chosen[method]}", flush=True)
    print("TOY_LEARNING_RATES = " + json.dumps(chosen))
    return chosen


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=0))


def table(args: argparse.Namespace) -> str:
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {(row, task): [run(row, task, s, args.runs) for s in seeds] for row in ROWS for task in world.TASKS}
    header = "| Method | " + " | ".join(f"{t} {c}" for t in world.TASKS for c in ("Base", "New", "H")) + " |"
    lines = [header, "|---|" + ":---:|" * (3 * len(world.TASKS))]
    for row in ROWS:
        cells = []
        for task in world.TASKS:
            for key in ("base_acc", "new_acc", "harmonic_mean"):
                m, s = _stats([r[key] for r in results[(row, task)]])
                cells.append(f"{m:.1f} ± {s:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + f"\n\nSeeds {','.join(map(str, seeds))}; mean ± population std; test split.\n"
    with atomic.atomic_open(os.path.join(args.runs, "toyworld_table.md")) as f:
        f.write(text)
    _plot_h(results, os.path.join(args.runs, "toyworld_h.png"))
    print(text)
    return text


def _plot_h(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(world.TASKS)
    x = np.arange(len(ROWS))
    for i, task in enumerate(world.TASKS):
        stats = [_stats([r["harmonic_mean"] for r in results[(row, task)]]) for row in ROWS]
        ax.bar(x + i * width, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=task, capsize=2)
    ax.set_xticks(x + width * (len(world.TASKS) - 1) / 2, list(ROWS), rotation=35, ha="right")
    ax.set_ylabel("H (base/new harmonic mean, %)")
    ax.set_title("Toy world: H per method (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as f:  # a file object: savefig cannot open a gs:// path itself
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def curves(args: argparse.Namespace) -> str:
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {"aape": "aape_prefix", "coop": "coop", "cupl": "cupl"}  # AAPE with its default token position
    shot_h = {(m, t, k): _stats([run(r, t, s, args.runs, tag=f"_shots{k}", shots=k)["harmonic_mean"]
                                 for s in seeds])
              for m, r in rows.items() for t in world.TASKS for k in SHOTS}
    desc_h = {(m, t, d): _stats([run(r, t, s, args.runs, tag=f"_desc{d}", descriptions=d)["harmonic_mean"]
                                 for s in seeds])
              for m, r in rows.items() if m != "coop" for t in world.TASKS for d in DESCRIPTIONS}
    for t in world.TASKS:
        for d in DESCRIPTIONS:
            desc_h[("coop", t, d)] = shot_h[("coop", t, 16)]
    lines = []
    for title, data, xs, label in (("H against shots per class", shot_h, SHOTS, "shots"),
                                   ("H against descriptions per class (16 shots)", desc_h, DESCRIPTIONS, "descriptions")):
        lines += [f"{title}:", "", "| Method | Task | " + " | ".join(f"{label}={'all' if x == 0 else x}" for x in xs)
                  + " |", "|---|---|" + ":---:|" * len(xs)]
        for m in rows:
            for t in world.TASKS:
                lines.append(f"| {m} | {t} | " + " | ".join(f"{data[(m, t, x)][0]:.1f} ± {data[(m, t, x)][1]:.1f}"
                                                           for x in xs) + " |")
        lines.append("")
    text = "\n".join(lines)
    with atomic.atomic_open(os.path.join(args.runs, "toyworld_curves.md")) as f:
        f.write(text)
    _plot_curves(shot_h, desc_h, rows, os.path.join(args.runs, "toyworld_curves.png"))
    print(text)
    return text


def _plot_curves(shot_h: dict, desc_h: dict, rows: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(world.TASKS), figsize=(16, 3.6))
    col = 0
    for data, xs, xlabel in ((shot_h, SHOTS, "shots per class"), (desc_h, DESCRIPTIONS, "descriptions per class")):
        labels = [str(x) if x else "all" for x in xs]
        for t in world.TASKS:
            ax = axes[col]
            col += 1
            for m in rows:
                ax.errorbar(range(len(xs)), [data[(m, t, x)][0] for x in xs], yerr=[data[(m, t, x)][1] for x in xs],
                            marker="o", capsize=2, label=m)
            ax.set_xticks(range(len(xs)), labels)
            ax.set_xlabel(xlabel)
            ax.set_title(t)
            ax.set_ylabel("H (%)")
    axes[0].legend()
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as f:  # a file object: savefig cannot open a gs:// path itself
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("select", "table", "curves"))
    parser.add_argument("--runs", required=True, help="directory for every run and the outputs")
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args(argv)
    storage.check_writable(args.runs, "--runs")  # creates a local folder; proves a bucket writable
    {"select": select, "table": table, "curves": curves}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
