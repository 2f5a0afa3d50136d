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
`root` (POSIX separators).  `root` may be a bucket folder (``gs://...``,
:mod:`aape_jax.storage`); a "folder" there is a name prefix other objects share.
"""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from etils import epath

from aape_jax import storage
from aape_jax.data.types import Example, ImageDataset

__all__ = ["IMAGE_EXTENSIONS", "list_entries", "missing_files", "list_images", "list_class_dirs", "class_images",
           "class_examples", "load_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)


def _raise(error: OSError) -> None:
    raise error


def list_entries(directory: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Names of the (sub-folders, files) directly in `directory`, from one listing: no stat or request per entry."""
    if storage.is_remote(directory):
        # A bucket listing tells folders (shared name prefixes) from objects; the walk lists the top folder
        # first and descends only when asked for more.
        try:
            _, dirs, files = next(storage.path(directory).walk(on_error=_raise))
        except FileNotFoundError:  # named as os.scandir names it (gcsfs names its request URL)
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(directory)) from None
        return dirs, files
    with os.scandir(directory) as it:
        entries = list(it)
    return [e.name for e in entries if e.is_dir()], [e.name for e in entries if e.is_file()]



def missing_files(paths: Sequence[str]) -> list[str]:
    """The `paths` that do not exist, from one listing per folder: not one stat (or, on a bucket, one
    request) per file, which for VQAv2's 82k training images would take an hour on gs://."""
    by_folder: dict[str, set[str]] = {}
    missing = []
    for full in paths:
        folder, name = os.path.split(full)
        if folder not in by_folder:
            try:
                by_folder[folder] = set(list_entries(folder or ".")[1])
            except (FileNotFoundError, NotADirectoryError):
                by_folder[folder] = set()
        if name not in by_folder[folder]:
            missing.append(full)
    return missing


def _image_names(directory: str | os.PathLike) -> list[str]:
    """Sorted names of the image files directly in `directory` (hidden files skipped)."""
    return sorted(name for name in list_entries(directory)[1]
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)


def list_images(directory: str | os.PathLike) -> list[epath.Path]:
    """Image files directly in `directory`, sorted by name (hidden files skipped)."""
    directory = storage.path(directory)
    return [directory / name for name in _image_names(directory)]


def list_class_dirs(directory: str | os.PathLike) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `directory`."""
    return sorted(name for name in list_entries(directory)[0] if not name.startswith("."))


def class_images(directory: epath.Path, cname: str, label: int, key_root: epath.Path) -> list[Example]:
    """The images of ``directory/cname`` (sorted by name), labelled `label`, keyed by their path relative to
    `key_root` (`directory` or a folder above it)."""
    folder = directory / cname
    # Joined as strings: an epath join and relative_to per image would make ImageNet's 1.28M images take
    # three times as long to list.  `folder` is never ".", so the strings are those of the joined paths.
    prefix, key = str(folder), folder.relative_to(key_root).as_posix()
    return [Example(image=os.path.join(prefix, name), label=label, key=f"{key}/{name}")
            for name in _image_names(folder)]


def class_examples(directory: epath.Path, labels: Mapping[str, int], key_root: epath.Path,
                   unknown: Callable[[epath.Path], str]) -> list[Example]:
    """The images of each class sub-folder of `directory`, labelled ``labels[folder name]`` and keyed by
    their path relative to `key_root`; a folder `labels` lacks raises ``ValueError(unknown(folder))``."""
    out: list[Example] = []
    for cname in list_class_dirs(directory):
        if cname not in labels:
            raise ValueError(unknown(directory / cname))
        out.extend(class_images(directory, cname, labels[cname], key_root))
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
    # A local root keeps pathlib's absolute(), which leaves ".." for the OS to resolve (through symlinks).
    root = storage.path(root if storage.is_remote(root) else pathlib.Path(root).absolute())
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

        def unknown(folder: epath.Path) -> str:
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
            examples = class_images(root, cname, label, root)
            n = len(examples)
            n_test = int(round(n * test_fraction))
            if n >= 2 and 0.0 < test_fraction < 1.0:
                n_test = min(max(n_test, 1), n - 1)
            order = np.random.default_rng([seed, label]).permutation(n)
            test_idx = set(int(i) for i in order[:n_test])
            for i, ex in enumerate(examples):
                (test if i in test_idx else train).append(ex)
    if not train and not test:
        raise ValueError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return ImageDataset(name=name, classnames=classnames, train=train, val=val, test=test)
