"""CoOp's on-disk layout: each dataset's image folder plus its split file.

This is the layout of CoOp's ``DATASETS.md`` (and Dassl's readers), which most
prompt-learning researchers already have under one data root ``ROOT``:

==============  =========================================================
dataset         files under ``ROOT``
==============  =========================================================
caltech101      ``caltech-101/101_ObjectCategories/`` + ``caltech-101/split_zhou_Caltech101.json``
oxford_pets     ``oxford_pets/images/`` + ``oxford_pets/split_zhou_OxfordPets.json``
stanford_cars   ``stanford_cars/`` (paths in the split file are relative to it) + ``stanford_cars/split_zhou_StanfordCars.json``
flowers102      ``oxford_flowers/jpg/`` + ``oxford_flowers/split_zhou_OxfordFlowers.json``
food101         ``food-101/images/`` + ``food-101/split_zhou_Food101.json``
fgvc_aircraft   ``fgvc_aircraft/images/`` + ``variants.txt`` + ``images_variant_{train,val,test}.txt``
sun397          ``sun397/SUN397/`` + ``sun397/split_zhou_SUN397.json``
dtd             ``dtd/images/`` + ``dtd/split_zhou_DescribableTextures.json``
eurosat         ``eurosat/2750/`` + ``eurosat/split_zhou_EuroSAT.json``
ucf101          ``ucf101/UCF-101-midframes/`` + ``ucf101/split_zhou_UCF101.json``
==============  =========================================================

ImageNet and its variants are read by :mod:`aape_jax.data.imagenet`.

A split file is ``{"train"|"val"|"test": [[relative_image_path, label,
classname], ...]}``.  The class names come from the split file itself (label
``i`` -> its classname); every label must always carry the same name, and the
labels must be exactly ``0..n-1``, otherwise a ``ValueError`` names the file.

``Example.image`` is the absolute image path (a ``str``); ``Example.key`` is the
path as written in the split file (relative to the image folder), so feature
stores stay valid when the data root moves.

Missing files: the dataset folder, the image folder and the split file are
checked up front, and a ``FileNotFoundError`` names the dataset and the exact
path expected.  The images themselves are *not* stat'ed eagerly (SUN397 alone
has ~40k of them): a missing image surfaces when it is opened, and the image
loader's error names its path.

``ROOT`` may be a bucket folder (``gs://...``, :mod:`aape_jax.storage`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from etils import epath

from aape_jax import storage
from aape_jax.errors import DataError
from aape_jax.data.types import Example, ImageDataset

__all__ = [
    "SPLIT_FILE_DATASETS",
    "COOP_DATASETS",
    "read_split_file",
    "load_coop",
    "load_fgvc_aircraft",
]

# name -> (dataset folder under root, image folder under it ("" = itself), split file)
SPLIT_FILE_DATASETS: dict[str, tuple[str, str, str]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "flowers102": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}

FGVC_DIR = "fgvc_aircraft"

COOP_DATASETS: tuple[str, ...] = tuple(SPLIT_FILE_DATASETS) + ("fgvc_aircraft",)
"""Datasets this module reads (ImageNet and its variants: :mod:`.imagenet`)."""

_SPLITS = ("train", "val", "test")
FGVC_IMAGE_DIR = "images"  # under FGVC_DIR: <imgname>.jpg
FGVC_CLASSNAMES_FILE = "variants.txt"  # under FGVC_DIR: the class names, one a line
FGVC_SPLIT_FILES: dict[str, str] = {s: f"images_variant_{s}.txt" for s in _SPLITS}  # under FGVC_DIR


def _require(path: epath.Path, what: str, dataset: str, *, is_dir: bool) -> None:
    if not (path.is_dir() if is_dir else path.is_file()):
        kind = "folder" if is_dir else "file"
        raise DataError(
            f"{dataset}: expected the {what} {kind} at {path} (CoOp layout; see "
            f"aape_jax/data/coop.py for the expected tree)",
            hint="set --config.dataset.root to the folder that holds the CoOp dataset folders "
                 "(DATASETS.md of CoOp), or --config.dataset.source=folder|tfds",
        )


def _dataset_dirs(root: str | os.PathLike, name: str, ddir: str, idir: str) -> tuple[epath.Path, epath.Path]:
    """Checks that the data root, ``ROOT/ddir`` and ``ROOT/ddir/idir`` are folders; returns the last two."""
    root = storage.path(root)
    _require(root, "data root", name, is_dir=True)
    _require(root / ddir, "dataset", name, is_dir=True)
    _require(root / ddir / idir, "image", name, is_dir=True)
    return root / ddir, root / ddir / idir


def read_split_file(
    split_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    dataset: str = "",
) -> tuple[list[str], dict[str, list[Example]]]:
    """Reads a CoOp ``split_zhou_*.json``.

    Args:
      split_file: the JSON file.
      image_dir: folder the relative image paths are relative to.
      dataset: name used in error messages.

    Returns:
      ``(classnames, {"train": [...], "val": [...], "test": [...]})``; a split
      absent from the file is an empty list.

    Raises:
      FileNotFoundError: the split file does not exist.
      ValueError: malformed file, a label with two different names, or labels
        that are not ``0..n-1``; the message names the file.
    """
    split_file = storage.path(split_file)
    image_dir = storage.path(image_dir)
    label = dataset or split_file.name
    _require(split_file, "split", label, is_dir=False)
    try:
        data = json.loads(storage.read_text(split_file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{label}: {split_file} is not valid JSON: {e}") from e
    if not isinstance(data, Mapping) or not any(s in data for s in _SPLITS):
        raise ValueError(
            f"{label}: {split_file} should be an object with keys "
            f"'train', 'val', 'test'; got {type(data).__name__}"
            + (f" with keys {sorted(data)}" if isinstance(data, Mapping) else "")
        )

    names: dict[int, str] = {}
    splits: dict[str, list[Example]] = {}
    for split in _SPLITS:
        rows = data.get(split, [])
        out: list[Example] = []
        for i, row in enumerate(rows):
            if not (isinstance(row, Sequence) and len(row) == 3):
                raise ValueError(
                    f"{label}: {split_file}: {split}[{i}] should be "
                    f"[relative_image_path, label, classname], got {row!r}"
                )
            rel, lab, cname = row
            try:
                lab = int(lab)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{label}: {split_file}: {split}[{i}] has a non-integer label {lab!r}"
                ) from None
            cname = str(cname)
            prev = names.setdefault(lab, cname)
            if prev != cname:
                raise ValueError(
                    f"{label}: {split_file}: label {lab} is named both {prev!r} "
                    f"and {cname!r} ({split}[{i}])"
                )
            rel = str(rel)
            out.append(Example(image=str(image_dir / rel), label=lab, key=rel))
        splits[split] = out

    n = len(names)
    if sorted(names) != list(range(n)):
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise ValueError(
            f"{label}: {split_file}: labels should be 0..{n - 1}; "
            f"got min {min(names, default=None)}, max {max(names, default=None)}"
            + (f", missing {missing[:10]}" if missing else "")
        )
    return [names[i] for i in range(n)], splits


def load_coop(name: str, root: str | os.PathLike) -> ImageDataset:
    """One of :data:`COOP_DATASETS` from the CoOp data root `root`."""
    if name == "fgvc_aircraft":
        return load_fgvc_aircraft(root)
    if name not in SPLIT_FILE_DATASETS:
        raise KeyError(
            f"unknown CoOp split-file dataset {name!r}; known: {', '.join(COOP_DATASETS)}"
        )
    ddir, idir, sfile = SPLIT_FILE_DATASETS[name]
    dataset_dir, image_dir = _dataset_dirs(root, name, ddir, idir)
    classnames, splits = read_split_file(dataset_dir / sfile, image_dir, dataset=name)
    return ImageDataset(name=name, classnames=classnames, **splits)


def load_fgvc_aircraft(root: str | os.PathLike) -> ImageDataset:
    """FGVC-Aircraft as CoOp reads it (no split json).

    ``ROOT/fgvc_aircraft/variants.txt`` gives the 100 class names (label = line
    index); ``images_variant_{train,val,test}.txt`` have lines ``"<imgname>
    <variant>"`` (the variant may contain spaces, e.g. ``"1025794 Boeing
    717"``); the image is ``images/<imgname>.jpg``, its key ``<imgname>.jpg``.
    """
    name = "fgvc_aircraft"
    ddir, image_dir = _dataset_dirs(root, name, FGVC_DIR, FGVC_IMAGE_DIR)
    variants_file = ddir / FGVC_CLASSNAMES_FILE
    _require(variants_file, "class-name (variants.txt)", name, is_dir=False)
    classnames = [ln.strip() for ln in storage.read_text(variants_file).splitlines() if ln.strip()]
    if len(set(classnames)) != len(classnames):
        raise ValueError(f"{name}: {variants_file} lists a variant twice")
    lab = {c: i for i, c in enumerate(classnames)}

    splits: dict[str, list[Example]] = {}
    for split in _SPLITS:
        f = ddir / FGVC_SPLIT_FILES[split]
        _require(f, f"{split} split", name, is_dir=False)
        out: list[Example] = []
        for lineno, ln in enumerate(storage.read_text(f).splitlines(), 1):
            ln = ln.strip()
            if not ln:
                continue
            parts = ln.split(" ", 1)
            if len(parts) != 2:
                raise ValueError(f"{name}: {f}:{lineno}: expected '<imgname> <variant>', got {ln!r}")
            imname, variant = parts[0], parts[1].strip()
            if variant not in lab:
                raise ValueError(
                    f"{name}: {f}:{lineno}: variant {variant!r} is not in {variants_file}"
                )
            key = imname + ".jpg"
            out.append(Example(image=str(image_dir / key), label=lab[variant], key=key))
        splits[split] = out
    return ImageDataset(name=name, classnames=classnames, **splits)
