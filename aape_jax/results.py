"""Aggregates a sweep's `metrics.json` files into the paper-style base-to-new table.

    python -m aape_jax.results RUNS_DIR [--out DIR] [--metric harmonic_mean]

Walks RUNS_DIR for `metrics.json` (runs laid out as `RUNS/<method>/<dataset>/seed<S>`
by `launch/sweep.py`, though any layout works when `config.json` sits beside the
metrics) and writes into `--out` (default RUNS_DIR). Either may be a local folder or a Cloud Storage
one (``gs://BUCKET/...``, `aape_jax.storage`); outputs are written atomically (`aape_jax.atomic`).

* `results.md`  -- one row per dataset (canonical 11-dataset order, others appended
  alphabetically) plus an "Average" row; per method the columns Base, New, H as
  "mean ± std" over seeds. Also printed to stdout.
* `results.csv` -- long format: method,dataset,seeds,base_mean,base_std,new_mean,
  new_std,h_mean,h_std (the "Average" rows included, `seeds` as "1;2;3").
* `h_per_dataset.png` -- grouped bar chart of `--metric` (default H) per dataset per
  method, error bars = std over seeds (needs matplotlib; skipped with a warning
  where it is not installed).

Conventions (stated in results.md too):

* Accuracies are percentages (0-100), as written by the training runs.
* std is the population std over seeds (ddof=0), as CoOp's `parse_test_res.py`.
* A dataset's H is the mean over seeds of each seed's own `harmonic_mean`.
* Average row: Base and New are the means over datasets of the per-dataset means;
  its H is H(avg Base, avg New), as CoOp/CoCoOp/KgCoOp/PromptSRC report it (not
  the mean of the per-dataset H). It carries no std. A method's average is taken
  over the datasets it has results for; when it misses some of the datasets in
  the table its average is marked "*" and the footnote names the missing ones.

Which run is which: method = `config.method` from the run's `config.json`; if the
config has no `method` field, the `<method>` directory of a `<method>/<dataset>/
seed<S>` path; otherwise "aape". Dataset = `config.dataset.name`, seed =
`config.seed`, each falling back to the path. Unreadable or partial metrics files
(bad JSON, missing base_acc/new_acc/harmonic_mean, non-numeric values) are skipped
with a warning naming the file; a (method, dataset, seed) seen twice keeps the
first path in sorted order, with a warning.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Iterable, Sequence

import numpy as np

from aape_jax import atomic, errors, numerics, storage
from aape_jax.methods import METHODS

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
REQUIRED_KEYS = ("base_acc", "new_acc", "harmonic_mean")
AVERAGE = "Average"

DATASET_ORDER = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
METHOD_ORDER = tuple(METHODS)  # the methods table's order; unknown methods follow, sorted
# Directories a run writes that never hold a run's metrics; not walked (a feature store can be large).
_SKIP_DIRS = {"feature_store", "checkpoints", "tensorboard", "random_clip"}
_SEED_DIR = re.compile(r"^seed(\d+)$")
_LABELS = {"harmonic_mean": "H (%)", "base_acc": "Base accuracy (%)", "new_acc": "New accuracy (%)"}
CSV_COLUMNS = ("method", "dataset", "seeds", "base_mean", "base_std", "new_mean", "new_std", "h_mean", "h_std")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------ collecting


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """One training run's `metrics.json`, with the (method, dataset, seed) it belongs to."""

    method: str
    dataset: str
    seed: int
    metrics: dict[str, Any]
    path: str  # the metrics.json


def _path_identity(run_dir: str) -> tuple[str | None, str | None, int | None]:
    """(method, dataset, seed) from a `.../<method>/<dataset>/seed<S>` directory, None where absent."""
    parts = storage.absolute(run_dir).split("/" if storage.is_remote(run_dir) else os.sep)
    match = _SEED_DIR.match(parts[-1])
    if not match or len(parts) < 3:
        return None, None, None
    return parts[-3], parts[-2], int(match.group(1))


def _read_json(path: str) -> Any:
    return json.loads(storage.read_text(path))


def read_run(metrics_path: str) -> RunMetrics:
    """One run; raises ValueError (with the reason) for an unusable metrics file."""
    try:
        metrics = _read_json(metrics_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(metrics, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"partial: missing {', '.join(missing)}")
    for key in REQUIRED_KEYS:
        if not _is_number(metrics[key]):
            raise ValueError(f"{key} is {metrics[key]!r}, not a finite number")

    run_dir = os.path.dirname(metrics_path)
    p_method, p_dataset, p_seed = _path_identity(run_dir)
    config: dict[str, Any] = {}
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if storage.path(config_path).is_file():
        try:
            loaded = _read_json(config_path)
            config = loaded["config"] if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warn(f"{config_path}: unreadable ({e}); method/dataset/seed taken from the path")
    method = config.get("method") or p_method or "aape"
    dataset_cfg = config.get("dataset")
    dataset = (dataset_cfg.get("name") if isinstance(dataset_cfg, dict) else None) or p_dataset
    seed = config.get("seed", p_seed)
    if dataset is None or seed is None:
        raise ValueError("no dataset/seed: neither config.json nor a <method>/<dataset>/seed<S> path names them")
    return RunMetrics(str(method), str(dataset), int(seed), metrics, metrics_path)


def collect(runs_dir: str) -> list[RunMetrics]:
    """Every usable run under `runs_dir`, local or ``gs://`` (warnings for the unusable ones)."""
    if not storage.path(runs_dir).is_dir():
        raise FileNotFoundError(f"runs directory {runs_dir!r} does not exist")
    paths = []
    for root, dirs, files in storage.walk(runs_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # pruned in place: the walk skips them
        if METRICS_FILE in files:
            paths.append(os.path.join(root, METRICS_FILE))
    runs: dict[tuple[str, str, int], RunMetrics] = {}
    for path in sorted(paths):
        try:
            run = read_run(path)
        except ValueError as e:
            warn(f"skipping {path}: {e}")
            continue
        key = (run.method, run.dataset, run.seed)
        if key in runs:
            warn(f"skipping {path}: duplicate of {runs[key].path} (method={key[0]}, dataset={key[1]}, seed={key[2]})")
            continue
        runs[key] = run
    return list(runs.values())


# ------------------------------------------------------------------ aggregating


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (method, dataset): mean and population std over seeds; std is None in the Average row."""

    seeds: tuple[int, ...]
    base_mean: float
    base_std: float | None
    new_mean: float
    new_std: float | None
    h_mean: float
    h_std: float | None
    extra: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # other metrics: (mean, std)


@dataclasses.dataclass
class Table:
    methods: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str], Cell]  # (method, dataset) -> cell; dataset may be AVERAGE
    missing: dict[str, list[str]]  # method -> datasets of the table it has no runs for


def _ordered(names: Iterable[str], canonical: Sequence[str]) -> list[str]:
    names = set(names)
    return [n for n in canonical if n in names] + sorted(names - set(canonical))


def aggregate(runs: Sequence[RunMetrics]) -> Table:
    if not runs:
        raise ValueError("no runs to aggregate")
    methods = _ordered({r.method for r in runs}, METHOD_ORDER)
    datasets = _ordered({r.dataset for r in runs}, DATASET_ORDER)
    cells: dict[tuple[str, str], Cell] = {}
    missing: dict[str, list[str]] = {}
    for method in methods:
        for dataset in datasets:
            group = sorted((r for r in runs if r.method == method and r.dataset == dataset), key=lambda r: r.seed)
            if not group:
                missing.setdefault(method, []).append(dataset)
                continue
            numeric = set.intersection(*({k for k, v in r.metrics.items() if _is_number(v)} for r in group))
            keys = [*REQUIRED_KEYS, *sorted(numeric - set(REQUIRED_KEYS))]
            b, n, h, *extra = [numerics.mean_std([r.metrics[k] for r in group]) for k in keys]  # (mean, std) each
            cells[(method, dataset)] = Cell(tuple(r.seed for r in group), *b, *n, *h, dict(zip(keys[3:], extra)))
        present = [cells[(method, d)] for d in datasets if (method, d) in cells]
        base = float(np.mean([c.base_mean for c in present]))
        new = float(np.mean([c.new_mean for c in present]))
        cells[(method, AVERAGE)] = Cell((), base, None, new, None, numerics.harmonic_mean(base, new), None)
    return Table(methods, datasets, cells, missing)


# ------------------------------------------------------------------ writing


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _main_stats(cell: Cell) -> dict[str, tuple[float, float | None]]:
    """`REQUIRED_KEYS` (Base, New, H, in that order) -> (mean, std)."""
    return dict(zip(REQUIRED_KEYS, [(cell.base_mean, cell.base_std), (cell.new_mean, cell.new_std),
                                    (cell.h_mean, cell.h_std)]))


def to_markdown(table: Table) -> str:
    header = ["Dataset"] + [f"{m} {col}" for m in table.methods for col in ("Base", "New", "H")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for dataset in [*table.datasets, AVERAGE]:
        row = [f"**{AVERAGE}**" if dataset == AVERAGE else dataset]
        for method in table.methods:
            cell = table.cells.get((method, dataset))
            if cell is None:
                row += ["–"] * 3
                continue
            star = "*" if dataset == AVERAGE and method in table.missing else ""
            row += [_fmt(mean, std) + star for mean, std in _main_stats(cell).values()]
        lines.append("| " + " | ".join(row) + " |")
    notes = [
        "",
        "Accuracies in %, mean ± std over seeds (population std, ddof=0, as CoOp's parse_test_res.py). "
        "A dataset's H is the mean over seeds of each seed's H. "
        "Average row: Base and New are means over datasets of the per-dataset means; "
        "its H is H(avg Base, avg New), as CoOp-style papers report it, not the mean of the per-dataset H.",
    ]
    for method, datasets in table.missing.items():
        notes.append(f"\n\\* {method}: average over the {len(table.datasets) - len(datasets)} datasets it has; "
                     f"missing {', '.join(datasets)}.")
    seed_sets = {m: {table.cells[(m, d)].seeds for d in table.datasets if (m, d) in table.cells}
                 for m in table.methods}
    seeds_line = "; ".join(
        f"{m}: " + " / ".join(",".join(map(str, s)) for s in sorted(sets)) for m, sets in seed_sets.items())
    notes.append(f"\nSeeds: {seeds_line}.")
    return "\n".join(lines + notes) + "\n"


def _csv_num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_csv_rows(table: Table) -> list[dict[str, str]]:
    rows = []
    for method in table.methods:
        for dataset in [*table.datasets, AVERAGE]:
            cell = table.cells.get((method, dataset))
            if cell is None:
                continue
            row = {"method": method, "dataset": dataset, "seeds": ";".join(map(str, cell.seeds))}
            for name, (mean, std) in zip(("base", "new", "h"), _main_stats(cell).values()):
                row[f"{name}_mean"], row[f"{name}_std"] = _csv_num(mean), _csv_num(std)
            rows.append(row)
    return rows


def write_csv(table: Table, path: str) -> None:
    with atomic.atomic_open(path) as f:  # csv's "\r\n" passes through text mode untranslated (as newline="")
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(to_csv_rows(table))


def _metric_stats(cell: Cell | None, metric: str) -> tuple[float, float] | None:
    if cell is None:
        return None
    if metric not in REQUIRED_KEYS:
        return cell.extra.get(metric)
    mean, std = _main_stats(cell)[metric]
    return mean, (np.nan if std is None else std)  # no error bar on the Average row


def plot(table: Table, path: str, metric: str = "harmonic_mean") -> bool:
    """Grouped bar chart of `metric` per dataset (plus Average) per method; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warn(f"matplotlib is not installed (pip install matplotlib); {path} not written")
        return False
    groups = [*table.datasets, AVERAGE] if metric in REQUIRED_KEYS else table.datasets
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(table.methods))
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 1.5 + 0.18 * len(groups) * len(table.methods))), 5.0))
    for i, method in enumerate(table.methods):
        means, stds = zip(*(_metric_stats(table.cells.get((method, d)), metric) or (np.nan, np.nan) for d in groups))
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=method)
    label = _LABELS.get(metric, metric)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per dataset, mean ± std over seeds"
                 + (" (Average: H of averaged Base/New)" if metric == "harmonic_mean" else ""))
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if metric in REQUIRED_KEYS:
        ax.set_ylim(0, 100)
    ax.legend(fontsize="small", ncol=min(7, len(table.methods)), loc="upper center", bbox_to_anchor=(0.5, -0.22),
              frameon=False)
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as f:  # a file object: savefig cannot open a gs:// path itself
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aape_jax.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", help="directory holding the runs (e.g. RUNS/<method>/<dataset>/seed<S>)")
    parser.add_argument("--out", default=None, help="where results.md/.csv and the plot go (default RUNS_DIR)")
    parser.add_argument("--metric", default="harmonic_mean",
                        help="metric plotted per dataset per method (harmonic_mean, base_acc, new_acc or any "
                             "numeric key of metrics.json; default harmonic_mean)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except Exception as e:  # a user error or a full disk: one line, exit 2 (parser.exit's SystemExit passes)
        code = errors.report(e, verbose=args.verbose, prog="error")
        if code is None:
            raise
        return code


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        runs = collect(args.runs_dir)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    if not runs:
        parser.exit(2, f"error: no usable {METRICS_FILE} under {args.runs_dir!r} (expected "
                       f"RUNS/<method>/<dataset>/seed<S>/{METRICS_FILE} with {', '.join(REQUIRED_KEYS)})\n")
    table = aggregate(runs)
    if args.metric not in REQUIRED_KEYS and not any(args.metric in c.extra for c in table.cells.values()):
        parser.exit(2, f"error: metric {args.metric!r} is not a numeric field of the metrics files\n")
    out = args.out or args.runs_dir
    markdown = to_markdown(table)
    if storage.is_remote(out):  # a missing bucket or credentials: one clear line before any upload
        storage.check_writable(out, "--out")
    try:
        with atomic.atomic_open(os.path.join(out, "results.md")) as f:  # creates a local `out`
            f.write(markdown)
        write_csv(table, os.path.join(out, "results.csv"))
        png = os.path.join(out, "h_per_dataset.png")
        plotted = plot(table, png, args.metric)
    except OSError as e:
        if errors.no_space(e) is not None:
            raise errors.NoSpaceError(e.filename or out) from e
        raise errors.UserError(f"cannot write the results into {out}: {e.strerror or e}",
                               hint="pick a writable --out") from e
    print(markdown, end="")
    print(f"\n{len(runs)} runs; wrote {os.path.join(out, 'results.md')}, {os.path.join(out, 'results.csv')}"
          + (f", {png}" if plotted else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
