"""aape_jax.results on hand-made metrics/config files: exact means and population stds, the
Average row with H(avg Base, avg New), CSV/Markdown/PNG outputs, warnings and errors."""

from __future__ import annotations

import csv
import json
import pathlib

import pytest

from aape_jax import results

# (method, dataset) -> per-seed (base, new, H). Values chosen so means and population stds are exact.
VALUES = {
    ("aape", "caltech101"): [(97.0, 94.0, 95.0), (98.0, 95.0, 96.0), (99.0, 96.0, 97.0)],
    ("aape", "dtd"): [(80.0, 60.0, 70.0), (80.0, 60.0, 70.0), (80.0, 60.0, 70.0)],
    ("coop", "caltech101"): [(96.0, 90.0, 92.0), (98.0, 92.0, 94.0), (100.0, 94.0, 96.0)],
    ("coop", "dtd"): [(79.0, 40.0, 50.0), (80.0, 41.0, 51.0), (81.0, 42.0, 52.0)],
}
STD_1 = (2 / 3) ** 0.5  # population std of (x-1, x, x+1)
STD_2 = (8 / 3) ** 0.5  # population std of (x-2, x, x+2)


def write_run(root: pathlib.Path, method: str, dataset: str, seed: int, base: float, new: float, h: float,
              *, config: bool = True, method_in_config: bool = True, layout: str | None = None) -> pathlib.Path:
    workdir = root / (layout or f"{method}/{dataset}/seed{seed}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.json").write_text(json.dumps(
        {"base_acc": base, "new_acc": new, "harmonic_mean": h, "train_loss": 0.5, "history": []}))
    if config:
        cfg = {"dataset": {"name": dataset, "root": ""}, "seed": seed}
        if method_in_config:
            cfg["method"] = method
        (workdir / "config.json").write_text(json.dumps({"config": cfg, "git": "abc"}))
    return workdir


def write_runs(root: pathlib.Path) -> pathlib.Path:
    """The runs of `VALUES` under `root`."""
    for (method, dataset), seeds in VALUES.items():
        for seed, (b, n, h) in enumerate(seeds, start=1):
            write_run(root, method, dataset, seed, b, n, h)
    return root


@pytest.fixture
def runs(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_runs(tmp_path / "runs")


def read_csv(path: pathlib.Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(results.CSV_COLUMNS)
    return {(r["method"], r["dataset"]): r for r in rows}


def test_csv_exact_means_stds_and_average(runs: pathlib.Path, tmp_path: pathlib.Path):
    out = tmp_path / "out"
    assert results.main([str(runs), "--out", str(out)]) == 0
    rows = read_csv(out / "results.csv")
    assert set(rows) == {(m, d) for m in ("coop", "aape") for d in ("caltech101", "dtd", "Average")}

    def nums(row):
        return {k: (float(row[k]) if row[k] else None) for k in results.CSV_COLUMNS[3:]}

    assert rows[("aape", "caltech101")]["seeds"] == "1;2;3"
    assert nums(rows[("aape", "caltech101")]) == pytest.approx(
        dict(base_mean=98, base_std=STD_1, new_mean=95, new_std=STD_1, h_mean=96, h_std=STD_1), abs=1e-4)
    assert nums(rows[("aape", "dtd")]) == pytest.approx(
        dict(base_mean=80, base_std=0, new_mean=60, new_std=0, h_mean=70, h_std=0), abs=1e-4)
    assert nums(rows[("coop", "caltech101")]) == pytest.approx(
        dict(base_mean=98, base_std=STD_2, new_mean=92, new_std=STD_2, h_mean=94, h_std=STD_2), abs=1e-4)
    assert nums(rows[("coop", "dtd")]) == pytest.approx(
        dict(base_mean=80, base_std=STD_1, new_mean=41, new_std=STD_1, h_mean=51, h_std=STD_1), abs=1e-4)

    # Average row: B and N averaged over datasets; H = H(avg B, avg N), not the mean of the H column.
    avg = nums(rows[("aape", "Average")])
    assert avg["base_mean"] == pytest.approx(89.0) and avg["new_mean"] == pytest.approx(77.5)
    assert avg["h_mean"] == pytest.approx(2 * 89.0 * 77.5 / (89.0 + 77.5), abs=1e-4)  # 82.8529, not 83.0
    assert avg["h_mean"] != pytest.approx(83.0, abs=1e-2)
    assert avg["base_std"] is None and avg["h_std"] is None
    coop_avg = nums(rows[("coop", "Average")])
    assert coop_avg["h_mean"] == pytest.approx(2 * 89.0 * 66.5 / (89.0 + 66.5), abs=1e-4)


def test_markdown_table(runs: pathlib.Path, capsys):
    assert results.main([str(runs)]) == 0
    markdown = (runs / "results.md").read_text()
    assert capsys.readouterr().out == markdown  # printed to stdout too
    lines = markdown.splitlines()
    # Methods in canonical order (coop before aape), datasets in canonical order.
    assert lines[0] == ("| Dataset | coop Base | coop New | coop H | aape Base | aape New | aape H |")
    assert lines[2] == "| caltech101 | 98.00 ± 1.63 | 92.00 ± 1.63 | 94.00 ± 1.63 | 98.00 ± 0.82 | 95.00 ± 0.82 | 96.00 ± 0.82 |"
    assert lines[3] == "| dtd | 80.00 ± 0.82 | 41.00 ± 0.82 | 51.00 ± 0.82 | 80.00 ± 0.00 | 60.00 ± 0.00 | 70.00 ± 0.00 |"
    assert lines[4] == "| **Average** | 89.00 | 66.50 | 76.12 | 89.00 | 77.50 | 82.85 |"
    assert "ddof=0" in markdown and "H(avg Base, avg New)" in markdown
    assert "*" not in lines[4].replace("**Average**", "")


def test_png_is_written(runs: pathlib.Path):
    pytest.importorskip("matplotlib")
    assert results.main([str(runs)]) == 0
    png = (runs / "h_per_dataset.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_missing_dataset_is_marked_and_averaged_over_present(runs: pathlib.Path):
    write_run(runs, "aape", "eurosat", 1, 70.0, 50.0, 58.0)
    write_run(runs, "aape", "imagenet", 1, 76.0, 70.0, 72.0)
    assert results.main([str(runs), "--metric", "base_acc"]) == 0
    lines = (runs / "results.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:7]] == [
        "| imagenet", "| caltech101", "| dtd", "| eurosat", "| **Average**"]
    assert lines[2] == "| imagenet | – | – | – | 76.00 ± 0.00 | 70.00 ± 0.00 | 72.00 ± 0.00 |"
    # coop misses imagenet and eurosat: its average (over its 2 datasets) is starred and explained.
    assert lines[6] == "| **Average** | 89.00* | 66.50* | 76.12* | 81.00 | 68.75 | 74.37 |"
    assert "coop: average over the 2 datasets it has; missing imagenet, eurosat." in "\n".join(lines)


def test_identity_from_path_and_config_fallbacks(tmp_path: pathlib.Path):
    root = tmp_path / "runs"
    write_run(root, "kgcoop", "dtd", 1, 80.0, 60.0, 68.57, config=False)  # identity from the path
    write_run(root, "cocoop", "dtd", 2, 80.0, 60.0, 68.57, method_in_config=False)  # method from the path
    write_run(root, "x", "eurosat", 3, 70.0, 50.0, 58.33, method_in_config=False, layout="flat/run_a")  # aape
    runs = {(r.method, r.dataset, r.seed) for r in results.collect(str(root))}
    assert runs == {("kgcoop", "dtd", 1), ("cocoop", "dtd", 2), ("aape", "eurosat", 3)}


def test_partial_and_unreadable_files_are_skipped_with_a_warning(runs: pathlib.Path, capsys):
    truncated = runs / "aape" / "dtd" / "seed4"
    truncated.mkdir()
    (truncated / "metrics.json").write_text('{"base_acc": 80.0, "new_')
    partial = runs / "coop" / "dtd" / "seed5"
    partial.mkdir()
    (partial / "metrics.json").write_text('{"base_acc": 80.0, "train_loss": 1.0}')
    # Not a run's metrics: a feature store is never walked.
    (runs / "feature_store" / "x").mkdir(parents=True)
    (runs / "feature_store" / "x" / "metrics.json").write_text("garbage")
    assert results.main([str(runs)]) == 0
    err = capsys.readouterr().err
    assert f"skipping {truncated / 'metrics.json'}: unreadable" in err
    assert f"skipping {partial / 'metrics.json'}: partial: missing new_acc, harmonic_mean" in err
    assert "feature_store" not in err
    rows = read_csv(runs / "results.csv")
    assert rows[("aape", "dtd")]["seeds"] == "1;2;3" and rows[("coop", "dtd")]["seeds"] == "1;2;3"


def test_empty_and_missing_dirs_are_clear_errors(tmp_path: pathlib.Path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        results.main([str(tmp_path / "empty")])
    assert e.value.code == 2
    assert "no usable metrics.json under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        results.main([str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_average_h_of_all_zero_accuracies_is_zero():
    # H(0, 0) is 0/0: the Average row must show 0, not NaN or an error.
    run = results.RunMetrics("aape", "dtd", 1, {"base_acc": 0.0, "new_acc": 0.0, "harmonic_mean": 0.0}, "m.json")
    average = results.aggregate([run]).cells[("aape", results.AVERAGE)]
    assert (average.base_mean, average.new_mean, average.h_mean) == (0.0, 0.0, 0.0)
