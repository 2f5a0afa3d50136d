"""aape_jax.results on hand-made captioning and VQA runs: results_generation.md/.csv (exact means and
population stds), the LiMBeR baseline an aape run trains beside itself vs a separately trained one,
VQA answer styles kept apart, and classification runs' table unchanged beside them."""

from __future__ import annotations

import csv
import json
import pathlib

import pytest

from aape_jax import results, storage
from test_results import write_runs
from test_storage_data import upload


def write_generation_run(root: pathlib.Path, name: str, task: str, method: str, seed: int, metrics: dict,
                         dataset: str = "synthetic", vqa: str | None = None) -> pathlib.Path:
    """A run folder `root/name` with `metrics` and the config.json of `task` (VQA set `vqa`)."""
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {"task": task, "method": method, "dataset": {"name": dataset}, "seed": seed}
    if vqa is not None:
        cfg["vqa"] = {"name": vqa, "shots": [0, 1, 4]}
    (workdir / "config.json").write_text(json.dumps({"config": cfg, "git": "abc"}))
    # What the training scripts also write: non-scores, which must be ignored.
    extra = {"method": method, "num_devices": 1, "random_weights": True, "random_lm": True, "train_loss": 1.5,
             "history": [{"loss": 1.5}], "samples": []}
    (workdir / "metrics.json").write_text(json.dumps({**extra, **metrics}))
    return workdir


def caption_scores(cider: float, clip: float, refclip: float, prefix: str = "", **more: float) -> dict:
    return {f"{prefix}cider_d": cider, f"{prefix}clip_s": clip, f"{prefix}refclip_s": refclip,
            **{prefix + k: v for k, v in more.items()}}


def vqa_scores(by_shots: dict[int, float], prefix: str = "", finetuned: float | None = None) -> dict:
    scores = {f"{prefix}vqa_accuracy_{n}shot": v for n, v in by_shots.items()}
    scores[f"{prefix}vqa_accuracy"] = by_shots[0]
    if finetuned is not None:
        scores[f"{prefix}vqa_accuracy_finetuned"] = finetuned
    return scores


def write_generation_runs(root: pathlib.Path) -> pathlib.Path:
    # Captioning, synthetic: aape seeds 1 and 2, each with the LiMBeR baseline trained beside it.
    # Per-set copies (`val_...`) and keys of no column (an old run's coco_cider_d) are not in the table.
    write_generation_run(root, "cap/aape/seed1", "captioning", "aape", 1, {
        **caption_scores(50.0, 70.0, 75.0, bleu_4=10.0, meteor=20.0, coco_cider_d=48.0),
        **caption_scores(30.0, 60.0, 65.0, prefix="limber_"),
        "val_cider_d": 999.0, "val_clip_s": 999.0, "val_refclip_s": 999.0, "limber_val_cider_d": 999.0})
    write_generation_run(root, "cap/aape/seed2", "captioning", "aape", 2, {
        **caption_scores(53.0, 71.0, 76.0, bleu_4=12.0),  # no meteor: that cell is over seed 1 only
        **caption_scores(34.0, 61.0, 66.0, prefix="limber_")})
    # A separately trained limber run for seed 1: it replaces the aape run's side-by-side baseline (30, 60, 65).
    write_generation_run(root, "cap/limber/seed1", "captioning", "limber", 1, caption_scores(32.0, 62.0, 63.0))
    # Another captioning dataset, sorted before "synthetic".
    write_generation_run(root, "cap/coco/seed1", "captioning", "aape", 1, caption_scores(100.0, 80.0, 85.0),
                         dataset="coco")
    # VQA (trained on synthetic captions, answered on vqav2) in the two answer styles: never averaged together.
    for seed, (z, one, four, lz, lone, lfour) in {1: (40.0, 45.0, 50.0, 30.0, 35.0, 38.0),
                                                   2: (44.0, 47.0, 54.0, 32.0, 36.0, 40.0)}.items():
        write_generation_run(root, f"vqa/master/seed{seed}", "vqa", "aape", seed, {
            **vqa_scores({0: z, 1: one, 4: four}), **vqa_scores({0: lz, 1: lone, 4: lfour}, prefix="limber_"),
            "vqa_style": "master"}, vqa="vqav2")
    write_generation_run(root, "vqa/update/seed1", "vqa", "aape", 1, {
        **vqa_scores({0: 60.0, 2: 62.0, 16: 65.0}, finetuned=70.0), "vqa_style": "update_style"}, vqa="vqav2")
    return root


@pytest.fixture
def gen_runs(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_generation_runs(tmp_path / "runs")


def sections(markdown: str) -> dict[str, list[str]]:
    """"## Title" -> that section's table lines."""
    out: dict[str, list[str]] = {}
    for block in markdown.split("## ")[1:]:
        title, *lines = block.splitlines()
        out[title] = [line for line in lines if line.startswith("|")]
    return out


def test_generation_markdown_cells(gen_runs: pathlib.Path, tmp_path: pathlib.Path):
    out = tmp_path / "out"
    assert results.main([str(gen_runs), "--out", str(out)]) == 0
    markdown = (out / "results_generation.md").read_text()
    assert markdown.index("## Captioning") < markdown.index("## VQA")
    tables = sections(markdown)
    assert list(tables) == ["Captioning", "VQA"]
    assert tables["Captioning"] == [
        "| Dataset | Method | Seeds | CIDEr-D | BLEU-4 | METEOR | CLIP-S | RefCLIP-S |",
        "|---|---|---|:---:|:---:|:---:|:---:|:---:|",
        "| coco | aape | 1 | 100.00 ± 0.00 | – | – | 80.00 ± 0.00 | 85.00 ± 0.00 |",
        # cider (50, 53): 51.5 ± 1.5; bleu (10, 12): 11 ± 1; meteor seed 1 only; clip (70, 71), refclip (75, 76).
        "| synthetic | aape | 1,2 | 51.50 ± 1.50 | 11.00 ± 1.00 | 20.00 ± 0.00 (seed 1) | 70.50 ± 0.50 | 75.50 ± 0.50 |",
        # seed 1 from the separate limber run (32, 62, 63), seed 2 from aape's side-by-side baseline (34, 61, 66):
        # cider 33 ± 1, clip 61.5 ± 0.5, refclip 64.5 ± 1.5 (with the side-by-side seed 1 it would be 32 ± 2, ...).
        "| synthetic | limber | 1,2 | 33.00 ± 1.00 | – | – | 61.50 ± 0.50 | 64.50 ± 1.50 |",
    ]
    assert tables["VQA"] == [
        # n-shot columns by n (16 after 4, not after 1 as text would sort them), fine-tuned last.
        "| Dataset | Method | Seeds | Accuracy | 0-shot | 1-shot | 2-shot | 4-shot | 16-shot | Fine-tuned |",
        "|---|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|",
        # master: zero-shot (40, 44): 42 ± 2; 1-shot (45, 47): 46 ± 1; 4-shot (50, 54): 52 ± 2.
        "| vqav2 (master) | aape | 1,2 | 42.00 ± 2.00 | 42.00 ± 2.00 | 46.00 ± 1.00 | – | 52.00 ± 2.00 | – | – |",
        # its LiMBeR baseline: (30, 32): 31 ± 1; (35, 36): 35.5 ± 0.5; (38, 40): 39 ± 1.
        "| vqav2 (master) | limber | 1,2 | 31.00 ± 1.00 | 31.00 ± 1.00 | 35.50 ± 0.50 | – | 39.00 ± 1.00 | – | – |",
        "| vqav2 (update_style) | aape | 1 | 60.00 ± 0.00 | 60.00 ± 0.00 | – | 62.00 ± 0.00 | – | 65.00 ± 0.00 "
        "| 70.00 ± 0.00 |",
    ]
    assert "ddof=0" in markdown
    assert "limber on synthetic seed 2: the LiMBeR baseline trained beside aape" in markdown
    assert "vqav2 (master) seeds 1,2" in markdown  # both VQA limber seeds are side-by-side baselines


def test_generation_csv_rows(gen_runs: pathlib.Path):
    assert results.main([str(gen_runs)]) == 0  # --out defaults to the runs folder
    with open(gen_runs / "results_generation.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ("task", "method", "dataset", "seeds", "metric", "mean", "std")
        rows = {(r["task"], r["method"], r["dataset"], r["metric"]): r for r in reader}
    assert len(rows) == 4 + 4 + 3 + 4 + 4 + 5  # one per non-empty cell: coco, synthetic aape/limber, VQA rows
    assert {k[3] for k in rows if k[0] == "captioning"} == set(results.CAPTION_COLUMNS)  # no coco_cider_d, val_
    row = rows[("captioning", "aape", "synthetic", "cider_d")]
    assert (row["seeds"], row["mean"], row["std"]) == ("1;2", "51.5000", "1.5000")
    row = rows[("captioning", "aape", "synthetic", "meteor")]
    assert (row["seeds"], row["mean"], row["std"]) == ("1", "20.0000", "0.0000")  # the seeds that metric is over
    row = rows[("captioning", "limber", "synthetic", "refclip_s")]  # (63, 66)
    assert (row["seeds"], row["mean"], row["std"]) == ("1;2", "64.5000", "1.5000")
    row = rows[("vqa", "limber", "vqav2 (master)", "vqa_accuracy_1shot")]  # (35, 36)
    assert (row["seeds"], row["mean"], row["std"]) == ("1;2", "35.5000", "0.5000")
    row = rows[("vqa", "aape", "vqav2 (update_style)", "vqa_accuracy_finetuned")]
    assert (row["seeds"], row["mean"], row["std"]) == ("1", "70.0000", "0.0000")
    assert ("vqa", "aape", "vqav2", "vqa_accuracy") not in rows  # the style is part of the dataset
    assert not any(k[2] == "synthetic" for k in rows if k[0] == "vqa")  # VQA's dataset is config.vqa.name


def test_separate_limber_run_takes_precedence_with_one_warning(gen_runs: pathlib.Path, capsys):
    runs = {(r.task, r.method, r.dataset, r.seed): r for r in results.collect_generation(str(gen_runs))}
    err = capsys.readouterr().err
    separate, beside = gen_runs / "cap/limber/seed1/metrics.json", gen_runs / "cap/aape/seed1/metrics.json"
    assert err.count("warning:") == 1
    assert str(separate) in err and str(beside) in err and "seed=1" in err
    seed1 = runs[("captioning", "limber", "synthetic", 1)]
    assert (seed1.path, seed1.beside_aape, seed1.metrics["cider_d"]) == (str(separate), False, 32.0)
    seed2 = runs[("captioning", "limber", "synthetic", 2)]
    assert (seed2.path, seed2.beside_aape) == (str(gen_runs / "cap/aape/seed2/metrics.json"), True)
    assert seed2.metrics == {"cider_d": 34.0, "clip_s": 61.0, "refclip_s": 66.0}
    aape1 = runs[("captioning", "aape", "synthetic", 1)]
    assert aape1.metrics == {"cider_d": 50.0, "clip_s": 70.0, "refclip_s": 75.0, "bleu_4": 10.0, "meteor": 20.0}
    # Captioning: 3 aape, the separate limber, the side-by-side seed 2; VQA: 3 aape, 2 side-by-side limber.
    assert len(runs) == 3 + 1 + 1 + 3 + 2
    assert runs[("vqa", "aape", "vqav2 (master)", 2)].metrics == {
        "vqa_accuracy": 44.0, "vqa_accuracy_0shot": 44.0, "vqa_accuracy_1shot": 47.0, "vqa_accuracy_4shot": 54.0}
    assert ("vqa", "limber", "vqav2 (update_style)", 1) not in runs  # that aape run had no limber_ keys


def test_collect_leaves_generation_runs_out_without_a_warning(gen_runs: pathlib.Path, capsys):
    write_runs(gen_runs / "classification")
    runs = results.collect(str(gen_runs))
    err = capsys.readouterr().err
    assert err == ""  # before: "skipping .../cap/aape/seed1/metrics.json: partial: missing base_acc, ..."
    assert {r.method for r in runs} == {"aape", "coop"} and len(runs) == 12
    assert all("/classification/" in r.path for r in runs)
    # And collect_generation leaves the classification runs out just as quietly.
    assert {r.task for r in results.collect_generation(str(gen_runs))} == {"captioning", "vqa"}
    assert capsys.readouterr().err.count("warning:") == 1  # the limber precedence only


def test_generation_only_runs_dir_writes_only_generation_files(gen_runs: pathlib.Path, tmp_path: pathlib.Path,
                                                                capsys):
    out = tmp_path / "out"
    assert results.main([str(gen_runs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results_generation.csv", "results_generation.md"]
    printed, err = capsys.readouterr()
    assert printed == (out / "results_generation.md").read_text()
    assert "7 captioning/VQA runs (+3 LiMBeR baselines trained beside aape)" in err
    assert "classification" not in err and "no usable" not in err


def test_both_kinds_write_both_and_the_classification_table_is_unchanged(gen_runs: pathlib.Path,
                                                                          tmp_path: pathlib.Path, capsys):
    alone = write_runs(tmp_path / "alone")
    assert results.main([str(alone), "--out", str(tmp_path / "out_alone")]) == 0
    printed_alone, err_alone = capsys.readouterr()
    write_runs(gen_runs / "classification")
    out = tmp_path / "out"
    assert results.main([str(gen_runs), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    for name in ("results.md", "results.csv"):
        assert (out / name).read_bytes() == (tmp_path / "out_alone" / name).read_bytes(), name
    assert not (tmp_path / "out_alone" / "results_generation.md").exists()
    generation = (out / "results_generation.md").read_text()
    assert printed == printed_alone + "\n" + generation
    assert "12 classification runs, 7 captioning/VQA runs" in err and "12 classification runs;" in err_alone
    assert str(out / "results_generation.csv") in err


def test_partial_generation_runs_are_skipped_with_a_warning(tmp_path: pathlib.Path, capsys):
    root = tmp_path / "runs"
    partial = write_generation_run(root, "a", "captioning", "aape", 1, {"cider_d": 50.0, "clip_s": None})
    truncated = write_generation_run(root, "b", "vqa", "aape", 1, {}, vqa="vqav2")
    (truncated / "metrics.json").write_text('{"vqa_accuracy": 4')
    # An aape run whose side-by-side baseline is partial: the aape run is kept, the baseline left out.
    half = write_generation_run(root, "c", "captioning", "aape", 2, {
        **caption_scores(50.0, 70.0, 75.0), "limber_cider_d": 30.0})
    dup = write_generation_run(root, "d", "captioning", "aape", 2, caption_scores(1.0, 1.0, 1.0))
    # The random LM a run writes for itself is never walked.
    (root / "c" / "random_lm" / "x").mkdir(parents=True)
    (root / "c" / "random_lm" / "x" / "metrics.json").write_text("garbage")
    runs = results.collect_generation(str(root))
    err = capsys.readouterr().err
    assert [(r.method, r.seed, r.path) for r in runs] == [("aape", 2, str(half / "metrics.json"))]
    assert f"skipping {partial / 'metrics.json'}: partial: missing refclip_s" in err
    assert f"skipping {truncated / 'metrics.json'}: unreadable" in err
    assert f"{half / 'metrics.json'}: the LiMBeR baseline trained beside aape left out: partial: missing " \
           "limber_clip_s, limber_refclip_s" in err
    assert f"skipping {dup / 'metrics.json'}: duplicate of {half / 'metrics.json'}" in err
    assert "random_lm" not in err
    assert results.collect(str(root)) == [] and capsys.readouterr().err == ""


def test_no_runs_error_mentions_generation_runs(tmp_path: pathlib.Path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        results.main([str(tmp_path / "empty")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no usable metrics.json under" in err and "captioning/vqa" in err


def test_generation_results_from_a_bucket_equal_the_local_ones(gen_runs, tmp_path, gcs_dir, capsys):
    upload(gen_runs, gcs_dir)
    assert results.main([str(gen_runs), "--out", str(tmp_path / "out")]) == 0
    local_err = capsys.readouterr().err
    assert results.main([gcs_dir]) == 0
    remote_out, remote_err = capsys.readouterr()
    out = storage.path(gcs_dir)
    for name in ("results_generation.md", "results_generation.csv"):
        assert (out / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
    assert not (out / "results.md").exists()
    assert remote_out == (out / "results_generation.md").read_text()
    assert local_err.count("warning:") == remote_err.count("warning:") == 1
    assert f"{gcs_dir}/cap/limber/seed1/metrics.json" in remote_err
