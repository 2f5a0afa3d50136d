"""`python -m aape_jax.data.check`: completeness of CoOp-layout datasets on tiny fake trees."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from aape_jax.data.check import SOURCES, check, main
from aape_jax.data.classnames import imagenet_subset, imagenet_wnids
from aape_jax.data.coop import SPLIT_FILE_DATASETS
from aape_jax.data.datasets import ALL_DATASETS

REPO = pathlib.Path(__file__).resolve().parents[1]


def _img(path: pathlib.Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((3, 4, 3), value, np.uint8)).save(path)


def _coop_tree(root: pathlib.Path, name: str, classes=("cat", "dog"), per_split=(3, 2, 1), ext=".jpg") -> dict:
    """A split-file dataset as CoOp lays it out; returns the split file's content."""
    ddir, idir, sfile = SPLIT_FILE_DATASETS[name]
    split = {"train": [], "val": [], "test": []}
    for label, c in enumerate(classes):
        for s, n in zip(split, per_split):
            for i in range(n):
                rel = f"{c}/{s}_{i}{ext}"
                _img(root / ddir / idir / rel, label)
                split[s].append([rel, label, c])
    (root / ddir / sfile).write_text(json.dumps(split))
    return split


WNIDS = ["n01440764", "n01443537"]  # tench, goldfish


def _imagenet_tree(root: pathlib.Path) -> None:
    d = root / "imagenet"
    d.mkdir(parents=True)
    (d / "classnames.txt").write_text("n01443537 goldfish\nn01440764 tench\n")
    for w in WNIDS:
        _img(d / "images" / "train" / w / "a.JPEG")
        _img(d / "images" / "train" / w / "b.JPEG")
        _img(d / "images" / "val" / w / f"ILSVRC2012_val_{w}.JPEG")


def _run(capsys, *argv: str) -> tuple[int, str, str, dict]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    return code, out, err, json.loads(last) if last.startswith("{") else {}


def test_every_dataset_has_a_source_hint():
    assert set(SOURCES) == set(ALL_DATASETS)
    assert SOURCES["caltech101"].url.endswith("DATASETS.md#caltech101")
    assert SOURCES["imagenet_sketch"].url.endswith("#imagenet-sketch")


@pytest.mark.parametrize("name", ["caltech101", "stanford_cars"])
def test_complete_split_file_dataset(tmp_path, capsys, name):
    _coop_tree(tmp_path, name)
    code, out, err, summary = _run(capsys, name, "--root", str(tmp_path))
    assert code == 0, out + err
    assert f"{name} under {tmp_path}: complete" in out
    assert "train 6, val 4, test 2" in out and "classes: 2" in out
    assert summary == {"dataset": name, "root": str(tmp_path), "complete": True,
                       "counts": {"train": 6, "val": 4, "test": 2}, "classes": 2, "missing": 0, "problems": 0}
    assert "get:" not in out


def test_missing_images_are_listed_relative_to_root(tmp_path, capsys):
    split = _coop_tree(tmp_path, "oxford_pets", per_split=(30, 1, 2))
    gone_train = [r[0] for r in split["train"][:25]]
    for rel in gone_train:
        (tmp_path / "oxford_pets" / "images" / rel).unlink()
    gone_test = split["test"][-1][0]
    (tmp_path / "oxford_pets" / "images" / gone_test).unlink()

    code, out, _, summary = _run(capsys, "oxford_pets", "--root", str(tmp_path), "--limit", "5")
    assert code == 1
    assert "INCOMPLETE" in out and "train 60, val 2, test 4" in out
    assert f"missing train images (25, relative to {tmp_path}):" in out
    assert "    oxford_pets/images/" + gone_train[0] in out.splitlines()
    assert "oxford_pets/images/" + gone_train[5] not in out  # only the first 5 ...
    assert "    ... and 20 more" in out  # ... then a count
    assert "missing test image (1, " in out and "    oxford_pets/images/" + gone_test in out.splitlines()
    assert "get: images.tar.gz" in out and "robots.ox.ac.uk" in out
    assert "split_zhou_OxfordPets.json from" not in out  # the split file is there
    assert 'section "OxfordPets"' in out
    assert summary["complete"] is False and summary["missing"] == 26

    report = check("oxford_pets", tmp_path)
    assert {m.what for m in report.missing} == {"train image", "test image"}
    assert not report.complete and report.problems == []


def test_missing_split_file_is_named_with_its_hint(tmp_path, capsys):
    _coop_tree(tmp_path, "caltech101")
    (tmp_path / "caltech-101" / "split_zhou_Caltech101.json").unlink()
    code, out, _, summary = _run(capsys, "caltech101", "--root", str(tmp_path))
    assert code == 1
    assert "missing split file (1, " in out
    assert "    caltech-101/split_zhou_Caltech101.json" in out.splitlines()
    assert "get: split_zhou_Caltech101.json from CoOp's Google Drive" in out and "into caltech-101/" in out
    assert "images: not counted" in out and summary["counts"] == {}
    assert "101_ObjectCategories.tar.gz" not in out  # the images are there


def test_missing_dataset_folder(tmp_path, capsys):
    code, out, _, _ = _run(capsys, "dtd", "--root", str(tmp_path))
    assert code == 1
    assert "    dtd/images/" in out.splitlines() and "    dtd/split_zhou_DescribableTextures.json" in out.splitlines()
    assert "get: dtd-r1.0.1.tar.gz" in out and "get: split_zhou_DescribableTextures.json" in out


def test_malformed_split_file_is_a_problem(tmp_path, capsys):
    _coop_tree(tmp_path, "eurosat")
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text('{"train": [["a.jpg", 0')
    code, out, _, summary = _run(capsys, "eurosat", "--root", str(tmp_path))
    assert code == 1 and summary["problems"] == 1
    assert "problem: eurosat/split_zhou_EuroSAT.json cannot be used" in out


def test_fgvc_aircraft(tmp_path, capsys):
    d = tmp_path / "fgvc_aircraft"
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nBoeing 717\n")
    rows = {"train": ["0001 707-320", "0002 Boeing 717"], "val": ["0003 707-320"], "test": ["0004 Boeing 717"]}
    for s, lines in rows.items():
        (d / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    for i in range(1, 5):
        _img(d / "images" / f"000{i}.jpg")
    code, out, _, _ = _run(capsys, "fgvc_aircraft", "--root", str(tmp_path))
    assert code == 0, out
    assert "train 2, val 1, test 1" in out and "classes: 2" in out

    (d / "images" / "0003.jpg").unlink()
    (d / "images_variant_test.txt").unlink()
    code, out, _, _ = _run(capsys, "fgvc_aircraft", "--root", str(tmp_path))
    assert code == 1
    assert "    fgvc_aircraft/images_variant_test.txt" in out.splitlines()
    assert "fgvc-aircraft-2013b.tar.gz" in out
    (d / "images_variant_test.txt").write_text("0004 Boeing 717\n")
    code, out, _, _ = _run(capsys, "fgvc_aircraft", "--root", str(tmp_path))
    assert code == 1 and "    fgvc_aircraft/images/0003.jpg" in out.splitlines()


def test_complete_imagenet(tmp_path, capsys):
    _imagenet_tree(tmp_path)
    code, out, err, summary = _run(capsys, "imagenet", "--root", str(tmp_path))
    assert code == 0, out + err
    assert "train 4, val 0, test 2" in out and "classes: 2" in out
    assert summary["counts"] == {"train": 4, "val": 0, "test": 2}


def test_imagenet_flat_val_is_reported(tmp_path, capsys):
    _imagenet_tree(tmp_path)
    val = tmp_path / "imagenet" / "images" / "val"
    for w in WNIDS:  # as ILSVRC2012_img_val.tar ships: every image directly in val/
        for f in (val / w).iterdir():
            f.rename(val / f.name)
        (val / w).rmdir()
    code, out, _, summary = _run(capsys, "imagenet", "--root", str(tmp_path))
    assert code == 1
    assert "problem: imagenet/images/val/ holds 2 images directly" in out
    assert "not in class folders" in out and "valprep.sh" in out
    assert "imagenet/images/val/n01440764/" not in out  # not one line per class: the problem says it
    assert summary["problems"] == 1


def test_imagenet_missing_parts(tmp_path, capsys):
    _imagenet_tree(tmp_path)
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    code, out, _, _ = _run(capsys, "imagenet", "--root", str(tmp_path))
    assert code == 1
    assert "    imagenet/classnames.txt" in out.splitlines()
    assert "get: classnames.txt from CoOp's Google Drive" in out
    # Without classnames.txt, the shipped 1000 wnids are expected.
    assert "missing train class folders (998, " in out

    _imagenet_tree(tmp_path / "b")
    for f in (tmp_path / "b" / "imagenet" / "images" / "val" / WNIDS[1]).iterdir():
        f.unlink()
    (tmp_path / "b" / "imagenet" / "images" / "train" / WNIDS[0]).rename(
        tmp_path / "b" / "imagenet" / "images" / "train" / "n99999999")
    code, out, _, _ = _run(capsys, "imagenet", "--root", str(tmp_path / "b"))
    assert code == 1
    assert f"    imagenet/images/train/{WNIDS[0]}/" in out.splitlines()
    assert "'n99999999'" in out and "no ImageNet class" in out


def test_imagenet_variant(tmp_path, capsys):
    wnids = imagenet_wnids()
    sub = imagenet_subset("imagenet_a")
    folder = tmp_path / "imagenet-adversarial" / "imagenet-a"
    for i in sub:
        _img(folder / wnids[i] / "x.jpg")
    code, out, _, _ = _run(capsys, "imagenet_a", "--root", str(tmp_path))
    assert code == 0, out
    assert "test 200" in out and "classes: 200" in out

    (folder / wnids[sub[3]] / "x.jpg").unlink()
    (folder / wnids[sub[3]]).rmdir()
    code, out, _, _ = _run(capsys, "imagenet_a", "--root", str(tmp_path))
    assert code == 1 and f"    imagenet-adversarial/imagenet-a/{wnids[sub[3]]}/" in out.splitlines()

    code, out, _, _ = _run(capsys, "imagenet_r", "--root", str(tmp_path))
    assert code == 1 and "    imagenet-rendition/imagenet-r/" in out.splitlines()
    assert "github.com/hendrycks/imagenet-r" in out


def test_unknown_name_lists_the_known_ones(tmp_path, capsys):
    code, out, err, _ = _run(capsys, "caltech", "--root", str(tmp_path))
    assert code == 2
    assert "unknown dataset 'caltech'" in err
    assert all(n in err for n in ALL_DATASETS)


def test_root_that_does_not_exist(tmp_path, capsys):
    code, _, err, _ = _run(capsys, "caltech101", "--root", str(tmp_path / "nope"))
    assert code == 2
    assert f"data root {tmp_path / 'nope'} does not exist" in err and "hint:" in err


def test_module_entry_point(tmp_path):
    _coop_tree(tmp_path, "food101")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "aape_jax.data.check", "food101", "--root", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["complete"] is True

    (tmp_path / "food-101" / "images" / "cat" / "test_0.jpg").unlink()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert "    food-101/images/cat/test_0.jpg" in proc.stdout.splitlines()

