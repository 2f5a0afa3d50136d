#!/usr/bin/env python3
"""Sweep runner: methods × datasets × seeds of the base-to-new protocol, skipping finished runs.

    python launch/sweep.py --methods aape,coop --datasets caltech101,dtd --seeds 1,2,3 --runs RUNS \
        [--shots 16] [--config-args runlocal,combine=feature] \
        [--extra "--config.dataset.root=... --config.clip=..."] [--dry-run] [--jobs 1] \
        [--feature-store DIR] [--verbose]

Each run is

    python -m aape_jax.main --config experiments/<method>_base2new.py:dataset=D,seed=S[,shots=N][,CONFIG_ARGS] \
        --workdir RUNS/<method>/<dataset>/seed<S> [EXTRA...] --config.feature_store=RUNS/feature_store

`--config-args` passes more config arguments (`runlocal`, `combine=feature`, ...; not dataset, seed or
shots, which the sweep sets) into every run's config string. `--extra` takes any string, including one
that starts with "--" (`--extra "--config.clip=/x"` and `--extra=...` alike); it is split like a shell
command line, and may be given more than once.

run from the repository root. A run whose `metrics.json` exists and holds base_acc, new_acc and
harmonic_mean is skipped ("skip"); one with a checkpoint but no usable metrics is launched again
with the same command, which resumes it ("resume"). All runs share one feature store (default
RUNS/feature_store; `--feature-store ""` leaves each run its own), so CLIP features are extracted
once per dataset. `--extra` naming `--config.feature_store` wins over `--feature-store`.

RUNS and the feature store may be local folders or Cloud Storage ones (`gs://BUCKET/...`, e.g. on a
TPU pod without a shared filesystem; `aape_jax.storage`): a bucket RUNS is checked for write access
before any run starts.

Exit status: 0 when every run finished; 75 as soon as a run exits with 75 (preempted: no further
runs start, running ones are waited for, and a launcher such as launch/restart_loop.sh restarts the
sweep, which skips what finished and resumes the rest); SIGTERM to the sweep is passed on to the
running runs and also ends it with 75 (SIGINT, Ctrl-C, starts no more runs and ends it with 130
once the running ones stop); otherwise 1 when some runs failed (each failure is
logged when it happens and all are listed at the end; the other runs still go); 2 for bad
arguments, including a method without `experiments/<method>_base2new.py` (checked before anything
starts).

With `--jobs 1` (default) runs go one after another with their output on this terminal; with
`--jobs N` N run at a time and each run's output goes to its WORKDIR/sweep.log (in a bucket, that
log is appended to when the run ends: an object cannot be written a line at a time). `--python` and
`--entry` choose the interpreter and the module run with `-m` (tests point them at a stub).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python launch/sweep.py` puts launch/, not the repository, on the path

from aape_jax import errors, storage  # noqa: E402

PREEMPTED = 75
REQUIRED_METRICS = ("base_acc", "new_acc", "harmonic_mean")


@dataclasses.dataclass(frozen=True)
class Job:
    method: str
    dataset: str
    seed: int
    workdir: str
    command: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.method}/{self.dataset}/seed{self.seed}"


def config_path(root: str, method: str) -> str:
    return os.path.join(root, "experiments", f"{method}_base2new.py")


def finished(workdir: str) -> bool:
    """metrics.json exists, parses, and holds the three accuracies."""
    try:
        metrics = json.loads(storage.read_text(os.path.join(workdir, "metrics.json")))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and all(k in metrics for k in REQUIRED_METRICS)


def has_checkpoint(workdir: str) -> bool:
    directory = storage.path(workdir) / "checkpoints"
    return directory.is_dir() and any(directory.iterdir())


def build_jobs(args: argparse.Namespace) -> list[Job]:
    runs = storage.absolute(args.runs)
    extra = list(args.extra_args)
    store: list[str] = []
    if args.feature_store is None:
        args.feature_store = os.path.join(runs, "feature_store")
    if args.feature_store and not any(a.startswith("--config.feature_store") for a in extra):
        store = [f"--config.feature_store={storage.absolute(args.feature_store)}"]
    jobs = []
    for method in args.methods:
        for dataset in args.datasets:
            for seed in args.seeds:
                config_args = (f"dataset={dataset},seed={seed}" + (f",shots={args.shots}" if args.shots else "")
                               + "".join(f",{a}" for a in args.config_args))
                workdir = os.path.join(runs, method, dataset, f"seed{seed}")
                command = (args.python, "-m", args.entry,
                           "--config", f"experiments/{method}_base2new.py:{config_args}",
                           "--workdir", workdir, *extra, *store)
                jobs.append(Job(method, dataset, seed, workdir, command))
    return jobs


class Sweep:
    def __init__(self, jobs: Sequence[Job], root: str, parallel: int):
        self.jobs, self.root, self.parallel = list(jobs), root, parallel
        self.lock = threading.RLock()  # re-entrant: the signal handler runs on the main thread
        self.procs: set[subprocess.Popen] = set()
        self.stop = threading.Event()  # set on preemption or a signal: start nothing more
        self.preempted: list[str] = []
        self.failures: list[tuple[str, int]] = []
        self.done: list[str] = []
        self.interrupted = False  # SIGINT (Ctrl-C): the terminal already signalled the runs

    def log(self, message: str) -> None:
        with self.lock:
            print(f"[sweep] {message}", flush=True)

    def on_signal(self, signum: int, _frame=None) -> None:
        self.stop.set()
        if signum == signal.SIGINT:
            self.interrupted = True
            print("[sweep] interrupted: waiting for the running run(s), starting no more", flush=True)
            return
        with self.lock:
            procs = list(self.procs)
        print(f"[sweep] signal {signum}: passing it on to {len(procs)} running run(s), starting no more",
              flush=True)
        for proc in procs:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def run_one(self, job: Job) -> None:
        if self.stop.is_set():
            return
        verb = "resume" if has_checkpoint(job.workdir) else "run"
        self.log(f"{verb} {job.name}: {shlex.join(job.command)}")
        log, log_file = os.path.join(job.workdir, "sweep.log"), None
        if self.parallel > 1:
            if storage.is_remote(log):  # an object cannot be appended to: gather the output here first
                log_file = tempfile.TemporaryFile()
            else:
                os.makedirs(job.workdir, exist_ok=True)
                log_file = open(log, "a", encoding="utf-8")
        try:
            with self.lock:
                if self.stop.is_set():
                    return
                proc = subprocess.Popen(job.command, cwd=self.root, stdout=log_file,
                                        stderr=subprocess.STDOUT if log_file else None)
                self.procs.add(proc)
            rc = proc.wait()
            with self.lock:
                self.procs.discard(proc)
        finally:
            if log_file:
                if storage.is_remote(log):
                    log_file.seek(0)
                    output = log_file.read().decode("utf-8", "replace")
                    if output and not errors.append_to_log(log, output):  # read and rewritten whole
                        self.log(f"could not write {log} for {job.name}")
                log_file.close()
        if rc == PREEMPTED:
            self.stop.set()
            with self.lock:
                self.preempted.append(job.name)
            self.log(f"preempted {job.name} (exit {PREEMPTED}): stopping the sweep")
        elif rc != 0 or not finished(job.workdir):
            with self.lock:
                self.failures.append((job.name, rc))
            where = f"; output in {log}" if log_file else ""
            reason = f"exit {rc}" if rc != 0 else "exit 0 but no usable metrics.json"
            self.log(f"FAILED {job.name} ({reason}){where}; going on with the rest")
        else:
            with self.lock:
                self.done.append(job.name)
            self.log(f"done {job.name}")

    def run(self) -> int:
        if self.parallel <= 1:
            for job in self.jobs:
                if self.stop.is_set():
                    break
                self.run_one(job)
        else:
            with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
                for future in [pool.submit(self.run_one, job) for job in self.jobs]:
                    future.result()
        return self.summary()

    def summary(self) -> int:
        print(f"[sweep] {len(self.done)} finished this time, {len(self.failures)} failed, "
              f"{len(self.preempted)} preempted", flush=True)
        if self.failures:
            print("[sweep] failed runs:", flush=True)
            for name, rc in self.failures:
                print(f"[sweep]   {name} (exit {rc})", flush=True)
        if self.interrupted:
            print("[sweep] interrupted: exit 130; the same command resumes", flush=True)
            return 130
        if self.stop.is_set():
            print(f"[sweep] stopped early (preemption or SIGTERM): exit {PREEMPTED}; the same command resumes",
                  flush=True)
            return PREEMPTED
        return 1 if self.failures else 0


def _csv(value: str) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def _seeds(value: str) -> list[int]:
    try:
        return [int(s) for s in _csv(value)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"seeds must be integers: {value!r}") from e


SWEEP_CONFIG_ARGS = ("dataset", "seed", "shots")


def _config_args(value: str) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    clash = [i for i in items if i.partition("=")[0] in SWEEP_CONFIG_ARGS]
    if clash:
        raise argparse.ArgumentTypeError(
            f"{', '.join(clash)}: the sweep sets dataset, seed and shots (use --datasets, --seeds, --shots)")
    if any(not i.partition("=")[0] or any(c in i for c in " :") for i in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated key=value or flag names, got {value!r}")
    return items


def _join_option_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """`--extra VALUE` -> `--extra=VALUE`, so argparse takes a VALUE that starts with "-" as the value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--methods", type=_csv, required=True, help="comma-separated, e.g. aape,coop")
    parser.add_argument("--datasets", type=_csv, required=True, help="comma-separated, e.g. caltech101,dtd")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated (default 1,2,3)")
    parser.add_argument("--runs", required=True, help="runs directory: RUNS/<method>/<dataset>/seed<S>")
    parser.add_argument("--shots", type=int, default=None, help="shots per base class (default: the config's)")
    parser.add_argument("--config-args", "--config_args", dest="config_args", type=_config_args, default=[],
                        help="more config arguments for every run's config string, e.g. runlocal,combine=feature")
    parser.add_argument("--extra", action="append", default=[],
                        help="more arguments for every run, e.g. \"--config.clip=...\" (any string; repeatable)")
    parser.add_argument("--feature-store", default=None,
                        help="shared feature store (default RUNS/feature_store; \"\" for one per run)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and skips), run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    parser.add_argument("--entry", default="aape_jax.main", help="module run with -m (default aape_jax.main)")
    parser.add_argument("--root", default=ROOT, help="repository root: configs are looked up and runs start here")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(_join_option_values(argv, ("--extra",)))
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        args.extra_args = [a for chunk in args.extra for a in shlex.split(chunk)]
    except ValueError as e:  # e.g. an unclosed quote
        parser.error(f"--extra {args.extra!r}: {e}")
    missing = [m for m in args.methods if not os.path.isfile(config_path(args.root, m))]
    if missing:
        parser.error("no config for method(s) " + ", ".join(
            f"{m} ({config_path(args.root, m)} does not exist)" for m in missing))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except OSError as e:  # an unwritable runs dir, a full disk, an interpreter that does not exist
        if args.verbose:
            import traceback

            traceback.print_exc()
        full = any(isinstance(x, OSError) and x.errno == errno.ENOSPC for x in _chain(e))
        where = getattr(e, "filename", None)
        message = (f"No space left on device{f' while writing {where}' if where else ''}" if full
                   else (str(e).strip().splitlines() or [type(e).__name__])[0])
        print(f"[sweep] error: {message}" + ("" if args.verbose else " (--verbose for the traceback)"),
              file=sys.stderr, flush=True)
        return 2


def _chain(e: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def run(args: argparse.Namespace) -> int:
    jobs = build_jobs(args)
    if storage.is_remote(args.runs) and not args.dry_run:  # a missing bucket or credentials: before any run
        storage.check_writable(args.runs, "--runs")
    todo = []
    for job in jobs:
        if finished(job.workdir):
            print(f"[sweep] skip {job.name}: {os.path.join(job.workdir, 'metrics.json')} exists", flush=True)
        else:
            todo.append(job)
    print(f"[sweep] {len(jobs)} runs, {len(jobs) - len(todo)} finished, {len(todo)} to go", flush=True)
    if args.dry_run:
        for job in todo:
            verb = "resume" if has_checkpoint(job.workdir) else "run"
            print(f"[sweep] {verb} {job.name}", flush=True)
            print(f"cd {shlex.quote(args.root)} && {shlex.join(job.command)}", flush=True)
        return 0
    sweep = Sweep(todo, args.root, args.jobs)
    previous = {s: signal.signal(s, sweep.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return sweep.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
