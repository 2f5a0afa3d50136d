"""Dataset sources on synthetic trees: CoOp layout, ImageNet + variants, folders, TFDS (mocked)."""

from __future__ import annotations

import json
import pathlib
import re
import types

import numpy as np
import PIL.Image
import pytest

from aape_jax.clip.preprocess import load_image
from aape_jax.data import classnames
from aape_jax.data.coop import SPLIT_FILE_DATASETS, read_split_file
from aape_jax.data.datasets import ALL_DATASETS, load_dataset
from aape_jax.data.folder import load_folder
from aape_jax.data.imagenet import imagenet_subset
from aape_jax.data.tfds_source import load_tfds


def _png(path: pathlib.Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((4, 5, 3), value, np.uint8)).save(path)


# --------------------------------------------------------------------------- #
# CoOp split files
# --------------------------------------------------------------------------- #
def _coop_tree(root: pathlib.Path, name: str, classes: list[str], per_split=(2, 1, 1)) -> dict:
    ddir, idir, sfile = SPLIT_FILE_DATASETS[name]
    image_dir = root / ddir / idir if idir else root / ddir
    split = {"train": [], "val": [], "test": []}
    for label, c in enumerate(classes):
        for s, n in zip(split, per_split):
            for i in range(n):
                rel = f"{c}/{s}_{i}.png"
                _png(image_dir / rel, label)
                split[s].append([rel, label, c])
    (root / ddir / sfile).write_text(json.dumps(split))
    return split


@pytest.mark.parametrize("name", ["caltech101", "oxford_pets", "stanford_cars", "eurosat", "ucf101"])
def test_coop_split_file_datasets(tmp_path, name):
    classes = ["b_class", "a_class", "c class"]
    split = _coop_tree(tmp_path, name, classes)
    ds = load_dataset(name, tmp_path)
    assert ds.name == name
    assert ds.classnames == classes  # label order from the split file, not sorted
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 3, 3]
    ex = ds.train[0]
    assert ex.key == split["train"][0][0] and ex.label == 0
    ddir, idir, _ = SPLIT_FILE_DATASETS[name]
    assert pathlib.Path(ex.image) == tmp_path / ddir / idir / ex.key
    assert load_image(ex.image).size == (5, 4)
    assert [e.label for e in ds.test] == [0, 1, 2]


def test_split_file_inconsistent_label_names(tmp_path):
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": [["a.jpg", 0, "cat"], ["b.jpg", 0, "dog"]], "test": []}))
    with pytest.raises(ValueError, match=r"split\.json.*label 0 is named both 'cat' and 'dog'"):
        read_split_file(f, tmp_path)


def test_split_file_labels_must_be_contiguous(tmp_path):
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": [["a.jpg", 0, "cat"], ["b.jpg", 2, "dog"]]}))
    with pytest.raises(ValueError, match=r"split\.json.*missing \[1\]"):
        read_split_file(f, tmp_path)


def test_split_file_malformed_row(tmp_path):
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"test": [["a.jpg", 0]]}))
    with pytest.raises(ValueError, match=r"test\[0\]"):
        read_split_file(f, tmp_path)


def test_coop_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dtd.*" + re.escape(str(tmp_path / "dtd"))):
        load_dataset("dtd", tmp_path)
    (tmp_path / "dtd").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "dtd" / "images"))):
        load_dataset("dtd", tmp_path)
    (tmp_path / "dtd" / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="split_zhou_DescribableTextures.json"):
        load_dataset("dtd", tmp_path)
    with pytest.raises(FileNotFoundError, match="data root"):
        load_dataset("dtd", tmp_path / "nope")


def test_fgvc_aircraft_txt_format(tmp_path):
    d = tmp_path / "fgvc_aircraft"
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nBoeing 717\nF/A-18\n")
    rows = {"train": ["0001 707-320", "0002 Boeing 717"], "val": ["0003 F/A-18"], "test": ["0004 Boeing 717", ""]}
    for s, lines in rows.items():
        (d / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    for i in range(1, 5):
        _png(d / "images" / f"000{i}.jpg")
    ds = load_dataset("fgvc_aircraft", tmp_path)
    assert ds.classnames == ["707-320", "Boeing 717", "F/A-18"]
    assert [(e.key, e.label) for e in ds.train] == [("0001.jpg", 0), ("0002.jpg", 1)]
    assert [e.label for e in ds.val] == [2] and [e.label for e in ds.test] == [1]
    assert pathlib.Path(ds.test[0].image) == d / "images" / "0004.jpg"

    (d / "images_variant_test.txt").write_text("0005 Concorde\n")
    with pytest.raises(ValueError, match=r"images_variant_test\.txt:1.*'Concorde'"):
        load_dataset("fgvc_aircraft", tmp_path)
    (d / "variants.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"fgvc_aircraft.*variants\.txt"):
        load_dataset("fgvc_aircraft", tmp_path)


# --------------------------------------------------------------------------- #
# ImageNet and variants
# --------------------------------------------------------------------------- #
def test_imagenet_coop_layout(tmp_path):
    d = tmp_path / "imagenet"
    # Written out of order: labels follow the sorted wnids.
    (d).mkdir()
    (d / "classnames.txt").write_text("n02 goldfish\nn01 tench\nn03 great white shark\n")
    for wnid in ("n01", "n02", "n03"):
        _png(d / "images" / "train" / wnid / "a.JPEG")
        _png(d / "images" / "train" / wnid / "b.jpeg")
    _png(d / "images" / "val" / "n03" / "v.JPEG")
    ds = load_dataset("imagenet", tmp_path)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert len(ds.train) == 6 and ds.val == []
    assert [(e.key, e.label) for e in ds.test] == [("val/n03/v.JPEG", 2)]
    assert ds.train[0].key == "train/n01/a.JPEG"

    _png(d / "images" / "val" / "n99" / "x.JPEG")
    with pytest.raises(ValueError, match="n99"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_missing_classnames_named(tmp_path):
    (tmp_path / "imagenet" / "images" / "train").mkdir(parents=True)
    (tmp_path / "imagenet" / "images" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "imagenet" / "classnames.txt"))):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"imagenet: expected the data root folder"):
        load_dataset("imagenet", tmp_path / "x")
    (tmp_path / "imagenet" / "images" / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "imagenet" / "images" / "val"))):
        load_dataset("imagenet", tmp_path)


@pytest.mark.parametrize(
    "name,subdir", [("imagenet_a", "imagenet-a"), ("imagenet_r", "imagenet-rendition/imagenet-r")]
)
def test_imagenet_a_r_labels_in_1000_space(tmp_path, name, subdir):
    wnids = classnames.imagenet_wnids()
    sub = imagenet_subset(name)
    chosen = [wnids[sub[0]], wnids[sub[-1]]]
    for w in chosen:
        _png(tmp_path / subdir / w / "x.jpg")
    (tmp_path / subdir / "README.txt").write_text("not a class")
    ds = load_dataset(name, tmp_path)
    assert ds.train == [] and ds.val == []
    assert ds.classnames == classnames.load("imagenet")
    assert [e.label for e in ds.test] == [sub[0], sub[-1]]
    assert all(e.label in set(sub) for e in ds.test)
    assert ds.test[0].key == f"{chosen[0]}/x.jpg"


def test_imagenet_v2_and_sketch(tmp_path):
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    _png(v2 / "0" / "a.jpeg")
    _png(v2 / "999" / "b.jpeg")
    ds = load_dataset("imagenet_v2", tmp_path)
    assert sorted(e.label for e in ds.test) == [0, 999] and len(ds.classnames) == 1000

    _png(tmp_path / "sketch" / "n01443537" / "s.JPEG")
    ds = load_dataset("imagenet_sketch", tmp_path)
    assert [e.label for e in ds.test] == [1]


def test_variant_missing_folder_lists_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"imagenet_a.*imagenet-adversarial/imagenet-a.*imagenet-a"):
        load_dataset("imagenet_a", tmp_path)


# --------------------------------------------------------------------------- #
# Generic folders
# --------------------------------------------------------------------------- #
def test_folder_flat_layout_deterministic_split(tmp_path):
    for c in ("zebra", "ant"):
        for i in range(10):
            _png(tmp_path / "ds" / c / f"{i}.png")
    (tmp_path / "ds" / "ant" / "notes.txt").write_text("ignored")
    a = load_folder(tmp_path / "ds", test_fraction=0.3, seed=1)
    b = load_folder(tmp_path / "ds", test_fraction=0.3, seed=1)
    c = load_folder(tmp_path / "ds", test_fraction=0.3, seed=2)
    assert a.name == "ds" and a.classnames == ["ant", "zebra"]
    assert len(a.train) == 14 and len(a.test) == 6 and a.val == []
    assert a.test == b.test and a.train == b.train
    assert {e.key for e in a.test} != {e.key for e in c.test}
    assert {e.key for e in a.train} | {e.key for e in a.test} == {
        f"{c}/{i}.png" for c in ("ant", "zebra") for i in range(10)
    }
    assert all(e.key.startswith(a.classnames[e.label] + "/") for e in a.train + a.test)


def test_folder_presplit_layout(tmp_path):
    for s, n in (("train", 3), ("test", 2), ("val", 1)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / s / c / f"{i}.jpg")
    ds = load_dataset("pets", tmp_path, source="folder")
    assert ds.name == "pets" and ds.classnames == ["cat", "dog"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 4)
    assert ds.test[0].key == "test/cat/0.jpg" and ds.test[-1].label == 1

    _png(tmp_path / "test" / "emu" / "0.jpg")
    with pytest.raises(ValueError, match="emu"):
        load_folder(tmp_path)


def test_folder_errors_name_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        load_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=re.escape(f"no class folders in {tmp_path}")):
        load_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="no images.*" + re.escape(str(tmp_path))):
        load_folder(tmp_path)


# --------------------------------------------------------------------------- #
# TFDS on a mocked builder
# --------------------------------------------------------------------------- #
class FakeBuilder:
    def __init__(self, names, splits):
        label = types.SimpleNamespace(names=names)
        self.info = types.SimpleNamespace(
            features={"label": label}, splits={k: None for k in splits}
        )
        self._splits = splits
        self.opened = []

    def as_data_source(self, split):
        self.opened.append(split)
        return self._splits[split]


def _recs(labels, value=7):
    return [{"image": np.full((3, 2, 3), value, np.uint8), "label": np.int64(l)} for l in labels]


def test_tfds_generic_builder():
    b = FakeBuilder(["x", "y"], {"train": _recs([0, 1, 1]), "test": _recs([1])})
    ds = load_tfds("my_tfds_set", builder=b)
    assert ds.classnames == ["x", "y"]
    assert [e.label for e in ds.train] == [0, 1, 1] and ds.val == []
    assert ds.test[0].key == "tfds/my_tfds_set/test/0"
    assert ds.train[2].key == "tfds/my_tfds_set/train/2"
    assert ds.train[0].image.name == "tfds/my_tfds_set/train/0"  # a RecordImage, read when decoded
    assert load_image(ds.train[0].image).size == (2, 3)


def test_tfds_caltech_maps_onto_coop_labels():
    cal = classnames.load("caltech101")
    tfds_names = ["accordion", "airplanes", "background_google", "faces", "faces_easy", "leopards"]
    b = FakeBuilder(tfds_names, {"train": _recs(range(6)), "test": _recs([2, 1])})
    ds = load_tfds("caltech101", builder=b)
    assert ds.classnames == cal
    # background_google and faces_easy dropped; the rest in CoOp's label space.
    assert [cal[e.label] for e in ds.train] == ["accordion", "airplane", "face", "leopard"]
    assert [e.key for e in ds.train] == [f"tfds/caltech101/train/{i}" for i in (0, 1, 3, 5)]
    assert [cal[e.label] for e in ds.test] == ["airplane"]


def test_tfds_validation_becomes_test_when_no_test_split():
    names = ["AnnualCrop", "Forest", "SeaLake"]
    b = FakeBuilder(names, {"train": _recs([0, 2]), "validation": _recs([1])})
    ds = load_tfds("eurosat", builder=b)
    eu = classnames.load("eurosat")
    assert [eu[e.label] for e in ds.train] == ["Annual Crop Land", "Sea or Lake"]
    assert ds.val == [] and [eu[e.label] for e in ds.test] == ["Forest"]


def test_tfds_imagenet_variant_maps_wnids():
    wnids = classnames.imagenet_wnids()
    b = FakeBuilder(wnids, {"test": _recs([5, 999])})
    ds = load_tfds("imagenet_a", builder=b)
    assert ds.train == [] and [e.label for e in ds.test] == [5, 999]
    assert ds.classnames == classnames.load("imagenet")


def test_tfds_split_override_and_probe_without_metadata():
    b = FakeBuilder(["a", "b"], {"train[:50%]": _recs([0]), "train[50%:]": _recs([1])})
    ds = load_tfds("x", builder=b, splits={"train": "train[:50%]", "test": "train[50%:]"})
    assert [e.label for e in ds.train] == [0] and [e.label for e in ds.test] == [1]
    assert ds.test[0].key == "tfds/x/train[50%:]/0"

    class NoMeta:
        info = types.SimpleNamespace(features={"label": types.SimpleNamespace(names=["a"])})

        def as_data_source(self, split):
            if split != "test":
                raise KeyError(split)
            return _recs([0])

    ds = load_tfds("y", builder=NoMeta())
    assert len(ds.test) == 1 and ds.train == []


def test_tfds_unmappable_class_and_unsupported():
    b = FakeBuilder(["banded", "not_a_texture"], {"train": _recs([0])})
    with pytest.raises(ValueError, match="not_a_texture"):
        load_tfds("dtd", builder=b)
    with pytest.raises(ValueError, match="no FGVC-Aircraft builder"):
        load_tfds("fgvc_aircraft", builder=b)
    with pytest.raises(ValueError, match="video"):
        load_dataset("ucf101", None, source="tfds")


def test_tfds_without_package_is_a_clear_import_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("tensorflow_datasets"):
            raise ImportError("no tfds")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'the \[tfds\] extra: `pip install -e "\.\[tfds\]"`'):
        load_tfds("dtd")


def test_tfds_extra_is_declared():
    import pathlib
    import tomllib

    pyproject = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert any(r.startswith("tensorflow-datasets") for r in pyproject["project"]["optional-dependencies"]["tfds"])


# --------------------------------------------------------------------------- #
# load_dataset dispatch
# --------------------------------------------------------------------------- #
def test_load_dataset_unknown_names_and_sources(tmp_path):
    assert len(ALL_DATASETS) == 15
    with pytest.raises(ValueError, match="valid names: imagenet, caltech101.*imagenet_r"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(ValueError, match="valid sources: coop, tfds, folder"):
        load_dataset("dtd", tmp_path, source="hf")


def test_tfds_images_are_read_only_when_decoded():
    class Record(dict):
        reads = 0

        def __getitem__(self, k):
            if k == "image":
                Record.reads += 1
            return super().__getitem__(k)

    import io

    buf = io.BytesIO()
    PIL.Image.fromarray(np.full((5, 4, 3), 9, np.uint8)).save(buf, format="PNG")
    records = [Record(image=buf.getvalue(), label=np.int64(i % 2)) for i in range(50)]
    records[7] = Record(image=b"not an image", label=np.int64(1))
    ds = load_tfds("my_tfds_set", builder=FakeBuilder(["x", "y"], {"train": records}))
    assert len(ds.train) == 50 and Record.reads == 0  # labels only: no image held or decoded
    assert np.asarray(load_image(ds.train[3].image)).shape == (5, 4, 3) and Record.reads == 1
    with pytest.raises(ValueError, match=r"tfds/my_tfds_set/train/7"):
        load_image(ds.train[7].image)
