"""A generic ``root/<class>/*.jpg`` image-folder source.

Two layouts, chosen by what is on disk:

1. **Pre-split**: ``root/train/<class>/...`` and ``root/test/<class>/...``
   (and optionally ``root/val/<class>/...``).  Used whenever both ``root/train``
   and ``root/test`` are folders.  The classes are the sorted sub-folder names
   of ``root/train``; a class folder under ``test``/``val`` that ``train`` lacks
   is an error (its label would be undefined).
2. **Flat**: ``root/<class>/...``.  The classes are the sorted sub-folder names
   of ``root``; each class's images (sorted by name) are shuffled by a generator
   seeded with ``(seed, label)`` and the first ``round(n * test_fraction)``
   go to test (at least one and at most ``n - 1`` when the class has two or more
   images and ``0 < test_fraction < 1``), the rest to train.  The split
   depends only on the file names, `seed` and `test_fraction`, never on the
   order the file system lists them in; ``val`` is empty.

Images are files with one of :data:`IMAGE_EXTENSIONS` (any case) directly in a
class folder; hidden files and sub-folders are ignored.  Labels are class
indices in sorted folder-name order; class names are the folder names.
``Example.image`` is the absolute path, ``Example.key`` the path relative to
`root` (POSIX separators).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping

import numpy as np

from aape_jax.data.types import Example, ImageDataset

__all__ = ["IMAGE_EXTENSIONS", "list_images", "list_class_dirs", "class_examples", "load_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)


def list_images(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Image files directly in `directory`, sorted by name (hidden files skipped)."""
    with os.scandir(directory) as it:
        out = [pathlib.Path(e.path) for e in it if not e.name.startswith(".")
               and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()]
    return sorted(out, key=lambda p: p.name)


def list_class_dirs(directory: str | os.PathLike) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `directory`."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def class_examples(directory: pathlib.Path, labels: Mapping[str, int], key_root: pathlib.Path,
                   unknown: Callable[[pathlib.Path], str]) -> list[Example]:
    """The images of each class sub-folder of `directory`, labelled ``labels[folder name]`` and keyed by
    their path relative to `key_root`; a folder `labels` lacks raises ``ValueError(unknown(folder))``."""
    out: list[Example] = []
    for cname in list_class_dirs(directory):
        if cname not in labels:
            raise ValueError(unknown(directory / cname))
        out.extend(Example(image=str(p), label=labels[cname], key=p.relative_to(key_root).as_posix())
                   for p in list_images(directory / cname))
    return out


def load_folder(
    root: str | os.PathLike,
    name: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageDataset:
    """Reads an image-folder dataset (see the module docstring for the layouts).

    Args:
      root: the folder.
      name: dataset name; defaults to the folder's name.
      test_fraction: flat layout only: share of each class's images put in test.
      seed: flat layout only: seed of the per-class shuffles.

    Raises:
      FileNotFoundError: `root` is not a folder.
      ValueError: no class folders, no images at all, or a bad `test_fraction`;
        the message names `root`.
    """
    root = pathlib.Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"image-folder dataset: {root} is not a folder")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    name = name or root.name

    if (root / "train").is_dir() and (root / "test").is_dir():
        classnames = list_class_dirs(root / "train")
        if not classnames:
            raise ValueError(f"{name}: no class folders in {root / 'train'}")
        classes = {c: i for i, c in enumerate(classnames)}

        def unknown(folder: pathlib.Path) -> str:
            return f"{folder}: class folder {folder.name!r} is not among the classes of {root / 'train'}"

        train = class_examples(root / "train", classes, root, unknown)
        test = class_examples(root / "test", classes, root, unknown)
        val = class_examples(root / "val", classes, root, unknown) if (root / "val").is_dir() else []
    else:
        classnames = list_class_dirs(root)
        if not classnames:
            raise ValueError(
                f"{name}: no class folders in {root} (expected {root}/<class>/*.jpg, "
                f"or {root}/train/<class>/ and {root}/test/<class>/)"
            )
        train, val, test = [], [], []
        for label, cname in enumerate(classnames):
            files = list_images(root / cname)
            n = len(files)
            n_test = int(round(n * test_fraction))
            if n >= 2 and 0.0 < test_fraction < 1.0:
                n_test = min(max(n_test, 1), n - 1)
            order = np.random.default_rng([seed, label]).permutation(n)
            test_idx = set(int(i) for i in order[:n_test])
            for i, p in enumerate(files):
                ex = Example(image=str(p), label=label, key=p.relative_to(root).as_posix())
                (test if i in test_idx else train).append(ex)
    if not train and not test:
        raise ValueError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return ImageDataset(name=name, classnames=classnames, train=train, val=val, test=test)
