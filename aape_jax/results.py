"""Aggregates a sweep's `metrics.json` files into the paper-style tables.

    python -m aape_jax.results RUNS_DIR [--out DIR] [--metric harmonic_mean]

Walks RUNS_DIR for `metrics.json` (runs laid out as `RUNS/<method>/<dataset>/seed<S>`
by `launch/sweep.py`, though any layout works when `config.json` sits beside the
metrics) and writes into `--out` (default RUNS_DIR). Either may be a local folder or a Cloud Storage
one (``gs://BUCKET/...``, `aape_jax.storage`); outputs are written atomically (`aape_jax.atomic`).
A run's kind is its `config.json`'s `config.task`: "captioning" and "vqa" runs
(`aape_jax.captioning.train`, `.vqa_train`) go to the generation tables, every other
run (no config, or task "classification") to the base-to-new table. Files are
written for the kinds present: only the generation ones for a RUNS_DIR of
captioning/VQA runs, only the base-to-new ones for classification runs.

Base-to-new (classification runs):

* `results.md`  -- one row per dataset (canonical 11-dataset order, others appended
  alphabetically) plus an "Average" row; per method the columns Base, New, H as
  "mean ± std" over seeds. Also printed to stdout.
* `results.csv` -- long format: method,dataset,seeds,base_mean,base_std,new_mean,
  new_std,h_mean,h_std (the "Average" rows included, `seeds` as "1;2;3").
* `h_per_dataset.png` -- grouped bar chart of `--metric` (default H) per dataset per
  method, error bars = std over seeds (needs matplotlib; skipped with a warning
  where it is not installed).

Captioning and VQA (generation runs):

* `results_generation.md` -- a "## Captioning" and a "## VQA" section (those with runs);
  one row per (dataset, method): datasets sorted, methods in the methods table's order
  then sorted; a Seeds column; per metric present in any run "mean ± std" over seeds.
  Captioning: CIDEr-D, BLEU-4, METEOR, CLIP-S, RefCLIP-S (`cider_d`, `bleu_4`, `meteor`,
  `clip_s`, `refclip_s`; x100, the primary evaluation set's unprefixed keys). VQA:
  accuracy (`vqa_accuracy`, zero-shot), the n-shot accuracies by n (`vqa_accuracy_{n}shot`),
  fine-tuned (`vqa_accuracy_finetuned`); the dataset is `config.vqa.name` with the
  answer style of metrics.json's `vqa_style` ("vqav2 (master)"), so styles are never
  averaged together. A cell over fewer seeds than its row's names them. Also printed.
* `results_generation.csv` -- long format: task,method,dataset,seeds,metric,mean,std
  (`seeds` as "1;2", the seeds that metric is over).

An "aape" generation run that trained the LiMBeR baseline beside itself (its `limber_`
keys) also gives a "limber" run for its (task, dataset, seed); a separately trained
limber run for the same (task, dataset, seed) takes precedence, with a warning naming both.

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
seed<S>` path; otherwise "aape". Dataset = `config.dataset.name` (VQA: `config.vqa.name`),
seed = `config.seed`, each falling back to the path. Unreadable or partial metrics files
(bad JSON, missing base_acc/new_acc/harmonic_mean -- captioning: cider_d/clip_s/refclip_s,
VQA: vqa_accuracy -- non-numeric values) are skipped with a warning naming the file; a
(method, dataset, seed) seen twice keeps the first path in sorted order, with a warning.
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
_SKIP_DIRS = {"feature_store", "checkpoints", "tensorboard", "random_clip", "random_lm"}
_SEED_DIR = re.compile(r"^seed(\d+)$")
_LABELS = {"harmonic_mean": "H (%)", "base_acc": "Base accuracy (%)", "new_acc": "New accuracy (%)"}
CSV_COLUMNS = ("method", "dataset", "seeds", "base_mean", "base_std", "new_mean", "new_std", "h_mean", "h_std")

# Captioning and VQA runs (`config.task`), collected by `collect_generation` and left out by `collect`.
GENERATION_TASKS = ("captioning", "vqa")  # also the order of results_generation.md's sections
GENERATION_FILE, GENERATION_CSV = "results_generation.md", "results_generation.csv"
GENERATION_CSV_COLUMNS = ("task", "method", "dataset", "seeds", "metric", "mean", "std")
LIMBER, LIMBER_PREFIX = "limber", "limber_"  # an aape run's side-by-side LiMBeR baseline: its keys so prefixed
CAPTION_COLUMNS = ("cider_d", "bleu_4", "meteor", "clip_s", "refclip_s")  # the table's, in this order
GENERATION_REQUIRED = {"captioning": ("cider_d", "clip_s", "refclip_s"), "vqa": ("vqa_accuracy",)}
_VQA_METRIC = re.compile(r"^vqa_accuracy(?:_(\d+)shot|_finetuned)?$")
_GENERATION_TITLES = {"captioning": "Captioning", "vqa": "VQA"}
_GENERATION_LABELS = {"cider_d": "CIDEr-D", "bleu_4": "BLEU-4", "meteor": "METEOR", "clip_s": "CLIP-S",
                      "refclip_s": "RefCLIP-S", "vqa_accuracy": "Accuracy", "vqa_accuracy_finetuned": "Fine-tuned"}


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


def _read_metrics(metrics_path: str) -> dict[str, Any]:
    """A run's metrics.json as a dict; raises ValueError (with the reason) for an unreadable one."""
    try:
        metrics = _read_json(metrics_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(metrics, dict):
        raise ValueError("not a JSON object")
    return metrics


def _check_required(metrics: dict[str, Any], keys: Sequence[str]) -> None:
    """ValueError unless every key of `keys` is in `metrics` as a finite number."""
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"partial: missing {', '.join(missing)}")
    for key in keys:
        if not _is_number(metrics[key]):
            raise ValueError(f"{key} is {metrics[key]!r}, not a finite number")


def _read_config(run_dir: str) -> tuple[dict[str, Any], str | None]:
    """The `config` of the `config.json` beside a run ({} where absent) and, where it cannot be read, why."""
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if not storage.path(config_path).is_file():
        return {}, None
    try:
        loaded = _read_json(config_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, f"{config_path}: unreadable ({e})"
    return (loaded["config"] if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict) else {}), None


def _identity(config: dict[str, Any], run_dir: str, dataset_field: str = "dataset") -> tuple[str, str, int]:
    """(method, dataset, seed) from the config, each falling back to the path; dataset = `config.<field>.name`."""
    p_method, p_dataset, p_seed = _path_identity(run_dir)
    method = config.get("method") or p_method or "aape"
    dataset_cfg = config.get(dataset_field)
    dataset = (dataset_cfg.get("name") if isinstance(dataset_cfg, dict) else None) or p_dataset
    seed = config.get("seed", p_seed)
    if dataset is None or seed is None:
        raise ValueError("no dataset/seed: neither config.json nor a <method>/<dataset>/seed<S> path names them")
    return str(method), str(dataset), int(seed)


def _task(config: dict[str, Any]) -> str:
    return str(config.get("task") or "classification")


@dataclasses.dataclass(frozen=True)
class _Found:
    """A metrics.json found under the runs directory, with its run's config (read once for both collectors)."""

    path: str
    config: dict[str, Any]
    config_error: str | None  # why config.json could not be read (then `config` is {}, the run a classification one)


def _scan(runs_dir: str) -> list[_Found]:
    """Every metrics.json under `runs_dir` (local or ``gs://``), in sorted order, with its config."""
    if not storage.path(runs_dir).is_dir():
        raise FileNotFoundError(f"runs directory {runs_dir!r} does not exist")
    paths = []
    for root, dirs, files in storage.walk(runs_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # pruned in place: the walk skips them
        if METRICS_FILE in files:
            paths.append(os.path.join(root, METRICS_FILE))
    return [_Found(path, *_read_config(os.path.dirname(path))) for path in sorted(paths)]


def _keep_first(runs: dict[tuple, Any], key: tuple, run: Any, names: Sequence[str]) -> bool:
    """Adds `run` under `key` unless a run (an earlier path) has it already: then warns; True if added."""
    if key in runs:
        identity = ", ".join(f"{n}={v}" for n, v in zip(names, key))
        warn(f"skipping {run.path}: duplicate of {runs[key].path} ({identity})")
        return False
    runs[key] = run
    return True


def _classification_run(found: _Found) -> RunMetrics:
    metrics = _read_metrics(found.path)
    _check_required(metrics, REQUIRED_KEYS)
    if found.config_error:
        warn(f"{found.config_error}; method/dataset/seed taken from the path")
    method, dataset, seed = _identity(found.config, os.path.dirname(found.path))
    return RunMetrics(method, dataset, seed, metrics, found.path)


def read_run(metrics_path: str) -> RunMetrics:
    """One classification run; raises ValueError (with the reason) for an unusable metrics file."""
    return _classification_run(_Found(metrics_path, *_read_config(os.path.dirname(metrics_path))))


def _collect(found: Sequence[_Found]) -> list[RunMetrics]:
    runs: dict[tuple[str, str, int], RunMetrics] = {}
    for f in found:
        if _task(f.config) in GENERATION_TASKS:
            continue  # collect_generation's
        try:
            run = _classification_run(f)
        except ValueError as e:
            warn(f"skipping {f.path}: {e}")
            continue
        _keep_first(runs, (run.method, run.dataset, run.seed), run, ("method", "dataset", "seed"))
    return list(runs.values())


def collect(runs_dir: str) -> list[RunMetrics]:
    """Every usable classification run under `runs_dir`, local or ``gs://`` (warnings for the unusable ones).

    Captioning and VQA runs (`config.task`) are left out without a warning: `collect_generation` reads them.
    """
    return _collect(_scan(runs_dir))


@dataclasses.dataclass(frozen=True)
class GenerationRun:
    """One captioning or VQA run's scores, with the (task, method, dataset, seed) they belong to.

    For VQA, `dataset` is `config.vqa.name` with the answer style, e.g. "vqav2 (master)".
    """

    task: str  # "captioning" | "vqa"
    method: str
    dataset: str
    seed: int
    metrics: dict[str, float]  # the task's scores (the unprefixed keys of metrics.json), x100
    path: str  # the metrics.json
    beside_aape: bool = False  # the LiMBeR baseline an aape run trained beside itself (its `limber_` keys)


def _task_scores(task: str, metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """`task`'s scores among `metrics`' `prefix`ed keys (finite numbers only), without the prefix."""
    scores = {}
    for key, value in metrics.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        known = name in CAPTION_COLUMNS if task == "captioning" else bool(name and _VQA_METRIC.match(name))
        if known and _is_number(value):
            scores[name] = float(value)
    return scores


def _generation_runs(found: _Found) -> list[GenerationRun]:
    """The run of `found` (a captioning/VQA one) and, for an aape run with `limber_` keys, its LiMBeR baseline."""
    task = _task(found.config)
    metrics = _read_metrics(found.path)
    required = GENERATION_REQUIRED[task]
    _check_required(metrics, required)
    method, dataset, seed = _identity(found.config, os.path.dirname(found.path),
                                      "vqa" if task == "vqa" else "dataset")
    if task == "vqa" and isinstance(metrics.get("vqa_style"), str):
        dataset = f"{dataset} ({metrics['vqa_style']})"  # the two answer styles are never averaged together
    runs = [GenerationRun(task, method, dataset, seed, _task_scores(task, metrics), found.path)]
    if method == "aape" and any(k.startswith(LIMBER_PREFIX) for k in metrics):
        try:
            _check_required(metrics, [LIMBER_PREFIX + k for k in required])
        except ValueError as e:
            warn(f"{found.path}: the LiMBeR baseline trained beside aape left out: {e}")
        else:
            runs.append(GenerationRun(task, LIMBER, dataset, seed, _task_scores(task, metrics, LIMBER_PREFIX),
                                      found.path, beside_aape=True))
    return runs


def _collect_generation(found: Sequence[_Found]) -> list[GenerationRun]:
    names = ("task", "method", "dataset", "seed")
    runs: dict[tuple[str, str, str, int], GenerationRun] = {}
    beside: list[GenerationRun] = []  # taken after every separately trained run: those take precedence
    for f in found:
        if _task(f.config) not in GENERATION_TASKS:
            continue  # collect's (an unreadable config.json too: collect warns about it)
        try:
            run, *baseline = _generation_runs(f)
        except ValueError as e:
            warn(f"skipping {f.path}: {e}")
            continue
        if _keep_first(runs, (run.task, run.method, run.dataset, run.seed), run, names):
            beside += baseline
    for run in beside:
        key = (run.task, run.method, run.dataset, run.seed)
        if key in runs:
            warn(f"{run.path}: its LiMBeR baseline (trained beside aape) left out for the separately trained "
                 f"limber run {runs[key].path} (task={run.task}, dataset={run.dataset}, seed={run.seed})")
            continue
        runs[key] = run
    order = {m: i for i, m in enumerate(_ordered({r.method for r in runs.values()}, METHOD_ORDER))}
    return sorted(runs.values(), key=lambda r: (GENERATION_TASKS.index(r.task), r.dataset, order[r.method], r.seed))


def collect_generation(runs_dir: str) -> list[GenerationRun]:
    """Every usable captioning and VQA run under `runs_dir`, local or ``gs://`` (warnings for the unusable ones).

    An aape run's `limber_` keys give a second, "limber" run (`beside_aape`), unless a separately
    trained limber run has the same (task, dataset, seed): that one is kept, with a warning naming both.
    Sorted by task (`GENERATION_TASKS`), dataset, method, seed.
    """
    return _collect_generation(_scan(runs_dir))


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


@dataclasses.dataclass(frozen=True)
class GenerationRow:
    """One (dataset, method) of a generation table: per metric (mean, population std, the seeds it is over)."""

    dataset: str
    method: str
    seeds: tuple[int, ...]
    stats: dict[str, tuple[float, float, tuple[int, ...]]]
    beside_aape_seeds: tuple[int, ...] = ()  # seeds whose run is an aape run's side-by-side LiMBeR baseline


@dataclasses.dataclass
class GenerationTable:
    task: str
    metrics: list[str]  # the columns, in `_metric_columns` order
    rows: list[GenerationRow]


def _metric_columns(task: str, names: set[str]) -> list[str]:
    """The table's columns among `names`: captioning's in `CAPTION_COLUMNS` order; VQA's accuracy, n-shot by n,
    fine-tuned."""
    if task == "captioning":
        return [m for m in CAPTION_COLUMNS if m in names]
    shots = sorted((int(match.group(1)), n) for n in names if (match := _VQA_METRIC.match(n)) and match.group(1))
    return ([m for m in ("vqa_accuracy",) if m in names] + [n for _, n in shots]
            + [m for m in ("vqa_accuracy_finetuned",) if m in names])


def aggregate_generation(runs: Sequence[GenerationRun]) -> list[GenerationTable]:
    """One table per task with runs (`GENERATION_TASKS` order); rows by dataset (sorted), then method."""
    if not runs:
        raise ValueError("no runs to aggregate")
    tables = []
    for task in GENERATION_TASKS:
        task_runs = [r for r in runs if r.task == task]
        if not task_runs:
            continue
        columns = _metric_columns(task, set().union(*(r.metrics for r in task_runs)))
        rows = []
        for dataset in sorted({r.dataset for r in task_runs}):
            for method in _ordered({r.method for r in task_runs if r.dataset == dataset}, METHOD_ORDER):
                group = sorted((r for r in task_runs if r.dataset == dataset and r.method == method),
                               key=lambda r: r.seed)
                stats = {}
                for metric in columns:
                    have = [r for r in group if metric in r.metrics]
                    if have:
                        stats[metric] = (*numerics.mean_std([r.metrics[metric] for r in have]),
                                         tuple(r.seed for r in have))
                rows.append(GenerationRow(dataset, method, tuple(r.seed for r in group), stats,
                                          tuple(r.seed for r in group if r.beside_aape)))
        tables.append(GenerationTable(task, columns, rows))
    return tables

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


def _seeds(seeds: Iterable[int], sep: str = ",") -> str:
    return sep.join(map(str, seeds))


def _named_seeds(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {_seeds(seeds)}"


def _generation_label(metric: str) -> str:
    match = _VQA_METRIC.match(metric)
    if match and match.group(1):
        return f"{match.group(1)}-shot"
    return _GENERATION_LABELS.get(metric, metric)


_GENERATION_NOTES = {
    "captioning": "Scores x100 on each run's primary evaluation set (metrics.json's unprefixed keys).",
    "vqa": "VQA accuracy in %; Accuracy is zero-shot (as 0-shot), n-shot with n in-context examples, Fine-tuned "
           "zero-shot after fine-tuning on VQA training questions. Dataset: config.vqa.name (answer style).",
}


def to_generation_markdown(tables: Sequence[GenerationTable]) -> str:
    """A "## Captioning" / "## VQA" section per table: rows (dataset, method), cells "mean ± std" over seeds."""
    sections = []
    for table in tables:
        header = ["Dataset", "Method", "Seeds"] + [_generation_label(m) for m in table.metrics]
        lines = [f"## {_GENERATION_TITLES.get(table.task, table.task)}", "",
                 "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + [":---:"] * len(table.metrics)) + "|"]
        for row in table.rows:
            cells = [row.dataset, row.method, _seeds(row.seeds)]
            for metric in table.metrics:
                if metric not in row.stats:
                    cells.append("–")
                    continue
                mean, std, seeds = row.stats[metric]
                cells.append(_fmt(mean, std) + ("" if seeds == row.seeds else f" ({_named_seeds(seeds)})"))
            lines.append("| " + " | ".join(cells) + " |")
        notes = [_GENERATION_NOTES.get(table.task, ""),
                 "Mean ± std over seeds (population std, ddof=0); a cell over fewer seeds than its row names them."]
        beside = [f"{row.dataset} {_named_seeds(row.beside_aape_seeds)}" for row in table.rows if row.beside_aape_seeds]
        if beside:
            notes.append(f"{LIMBER} on {'; '.join(beside)}: the LiMBeR baseline trained beside aape in the aape run "
                         "(its `limber_` keys); a separately trained limber run takes precedence.")
        sections.append("\n".join(lines + ["", " ".join(n for n in notes if n)]))
    return "\n\n".join(sections) + "\n"


def to_generation_csv_rows(tables: Sequence[GenerationTable]) -> list[dict[str, str]]:
    rows = []
    for table in tables:
        for row in table.rows:
            for metric in table.metrics:
                if metric in row.stats:
                    mean, std, seeds = row.stats[metric]
                    rows.append({"task": table.task, "method": row.method, "dataset": row.dataset,
                                 "seeds": _seeds(seeds, ";"), "metric": metric, "mean": _csv_num(mean),
                                 "std": _csv_num(std)})
    return rows


def write_generation_csv(tables: Sequence[GenerationTable], path: str) -> None:
    with atomic.atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=GENERATION_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(to_generation_csv_rows(tables))

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
    parser.add_argument("--out", default=None,
                        help="where results.md/.csv, the plot and results_generation.md/.csv go (default RUNS_DIR)")
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
        found = _scan(args.runs_dir)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    runs, generation = _collect(found), _collect_generation(found)
    if not runs and not generation:
        parser.exit(2, f"error: no usable {METRICS_FILE} under {args.runs_dir!r} (expected "
                       f"RUNS/<method>/<dataset>/seed<S>/{METRICS_FILE} with {', '.join(REQUIRED_KEYS)}, or captioning/"
                       f"vqa runs (config.json task) with {', '.join(GENERATION_REQUIRED['captioning'])} / "
                       f"{', '.join(GENERATION_REQUIRED['vqa'])})\n")
    out = args.out or args.runs_dir
    markdown = generation_markdown = ""
    if runs:  # --metric is the base-to-new plot's
        table = aggregate(runs)
        if args.metric not in REQUIRED_KEYS and not any(args.metric in c.extra for c in table.cells.values()):
            parser.exit(2, f"error: metric {args.metric!r} is not a numeric field of the metrics files\n")
        markdown = to_markdown(table)
    if generation:
        generation_tables = aggregate_generation(generation)
        generation_markdown = to_generation_markdown(generation_tables)
    if storage.is_remote(out):  # a missing bucket or credentials: one clear line before any upload
        storage.check_writable(out, "--out")
    written = []
    try:
        if runs:
            written.append(os.path.join(out, "results.md"))
            with atomic.atomic_open(written[-1]) as f:  # creates a local `out`
                f.write(markdown)
            written.append(os.path.join(out, "results.csv"))
            write_csv(table, written[-1])
            png = os.path.join(out, "h_per_dataset.png")
            if plot(table, png, args.metric):
                written.append(png)
        if generation:
            written.append(os.path.join(out, GENERATION_FILE))
            with atomic.atomic_open(written[-1]) as f:
                f.write(generation_markdown)
            written.append(os.path.join(out, GENERATION_CSV))
            write_generation_csv(generation_tables, written[-1])
    except OSError as e:
        if errors.no_space(e) is not None:
            raise errors.NoSpaceError(e.filename or out) from e
        raise errors.UserError(f"cannot write the results into {out}: {e.strerror or e}",
                               hint="pick a writable --out") from e
    print(markdown + ("\n" if markdown and generation_markdown else "") + generation_markdown, end="")
    counts = [f"{len(runs)} classification runs"] if runs else []
    if generation:
        beside = sum(r.beside_aape for r in generation)
        plural = "s" if beside > 1 else ""
        counts.append(f"{len(generation) - beside} captioning/VQA runs"
                      + (f" (+{beside} LiMBeR baseline{plural} trained beside aape)" if beside else ""))
    print(f"\n{', '.join(counts)}; wrote {', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
