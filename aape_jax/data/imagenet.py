"""ImageNet in CoOp's layout, and its four variants as their releases ship them.

Under the data root ``ROOT``:

===============  ==========================================================
dataset          folders (the first one found is used)
===============  ==========================================================
imagenet         ``imagenet/images/train/<wnid>/``, ``imagenet/images/val/<wnid>/``,
                 ``imagenet/classnames.txt`` (required)
imagenet_v2      ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``
                 or ``imagenetv2-matched-frequency-format-val/<0..999>/``
imagenet_sketch  ``imagenet-sketch/images/<wnid>/``, ``imagenet-sketch/sketch/<wnid>/``
                 or ``sketch/<wnid>/``
imagenet_a       ``imagenet-adversarial/imagenet-a/<wnid>/`` or ``imagenet-a/<wnid>/``
imagenet_r       ``imagenet-rendition/imagenet-r/<wnid>/`` or ``imagenet-r/<wnid>/``
===============  ==========================================================

``classnames.txt`` has one ``"<wnid> <class name>"`` per line (CoOp ships
CLIP's cleaned names in it; :func:`aape_jax.data.classnames.load` has the same
list).  Label ``i`` is the ``i``-th wnid in sorted order, so with the full file
labels are the standard ImageNet indices.  ImageNet's ``train`` is the train
folder, ``test`` the val folder; ``val`` is left empty (CoOp aliases it to the
test set, which would only make callers extract the 50k features twice).

The variants are test-only (``train == val == []``) and always labelled in
ImageNet's 1000-class space, with ImageNet's names: from a ``classnames.txt``
next to the variant's images (CoOp's layout puts a copy in each variant's
folder) if there is one, else the shipped list.  ImageNet-A and -R contain
only 200 classes; :func:`imagenet_subset` gives their label indices, which
evaluation uses to restrict the candidate classes (as CoOp evaluates them on
their 200 classes).  ImageNet-V2's folders are the label indices themselves.

Files that are not folders (e.g. ImageNet-A's ``README.txt``) are skipped; a
class folder whose name is not a known wnid is an error.  Folder trees are
listed eagerly (one ``scandir`` per class), images are not opened or checked:
a broken image surfaces when it is loaded, and the loader's error names it.
The data root may be a bucket folder (``gs://...``, :mod:`aape_jax.storage`).
"""

from __future__ import annotations

import os

from etils import epath

from aape_jax import storage
from aape_jax.data import classnames as _classnames
from aape_jax.data.classnames import imagenet_subset, imagenet_wnids
from aape_jax.data.folder import class_examples, class_images, list_class_dirs
from aape_jax.data.types import Example, ImageDataset

__all__ = [
    "VARIANT_DIRS",
    "read_wnid_classnames",
    "load_imagenet",
    "load_imagenet_variant",
    "imagenet_subset",
    "imagenet_wnids",
]

# ImageNet under the data root: IMAGENET_DIR/IMAGENET_IMAGE_DIR/{train,val}/<wnid>/, IMAGENET_DIR/IMAGENET_CLASSNAMES_FILE.
IMAGENET_DIR = "imagenet"
IMAGENET_IMAGE_DIR = "images"
IMAGENET_CLASSNAMES_FILE = "classnames.txt"

# Candidate image folders (relative to the data root), first existing one wins.
VARIANT_DIRS: dict[str, tuple[str, ...]] = {
    "imagenet_v2": (
        "imagenetv2/imagenetv2-matched-frequency-format-val",
        "imagenetv2-matched-frequency-format-val",
    ),
    "imagenet_sketch": ("imagenet-sketch/images", "imagenet-sketch/sketch", "sketch"),
    "imagenet_a": ("imagenet-adversarial/imagenet-a", "imagenet-a"),
    "imagenet_r": ("imagenet-rendition/imagenet-r", "imagenet-r"),
}


def read_wnid_classnames(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` of a CoOp ``classnames.txt``, sorted by wnid.

    Raises:
      FileNotFoundError: no such file (the message names it).
      ValueError: a line without a name, or a repeated wnid.
    """
    path = storage.path(path)
    if not path.is_file():
        raise FileNotFoundError(f"imagenet: expected the class-name file at {path}")
    table: dict[str, str] = {}
    for lineno, line in enumerate(storage.read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise ValueError(f"{path}:{lineno}: expected '<wnid> <class name>', got {line!r}")
        wnid, name = parts[0], parts[1].strip()
        if wnid in table:
            raise ValueError(f"{path}:{lineno}: wnid {wnid} appears twice")
        table[wnid] = name
    wnids = sorted(table)
    return wnids, [table[w] for w in wnids]


def _wnid_examples(folder: epath.Path, wnids: list[str], dataset: str, key_root: epath.Path) -> list[Example]:
    index = {w: i for i, w in enumerate(wnids)}
    return class_examples(folder, index, key_root, lambda d: (
        f"{dataset}: folder {d} is not an ImageNet class (not among the {len(index)} known wnids)"))


def load_imagenet(root: str | os.PathLike) -> ImageDataset:
    """ImageNet from ``ROOT/imagenet`` (CoOp layout; see the module docstring)."""
    root = storage.path(root)
    ddir = root / IMAGENET_DIR
    images = ddir / IMAGENET_IMAGE_DIR
    for p, what in ((root, "data root"), (ddir, "dataset"), (images / "train", "train image"),
                    (images / "val", "val image")):
        if not p.is_dir():
            raise FileNotFoundError(f"imagenet: expected the {what} folder at {p}")
    wnids, names = read_wnid_classnames(ddir / IMAGENET_CLASSNAMES_FILE)
    # Keys are relative to images/: "train/<wnid>/<file>", "val/<wnid>/<file>".
    train = _wnid_examples(images / "train", wnids, "imagenet", images)
    test = _wnid_examples(images / "val", wnids, "imagenet", images)
    return ImageDataset(name="imagenet", classnames=names, train=train, val=[], test=test)


def load_imagenet_variant(name: str, root: str | os.PathLike) -> ImageDataset:
    """A test-only ImageNet variant, labelled in ImageNet's 1000 classes."""
    if name not in VARIANT_DIRS:
        raise KeyError(f"unknown ImageNet variant {name!r}; known: {', '.join(VARIANT_DIRS)}")
    root = storage.path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: expected the data root folder at {root}")
    folder = next((root / c for c in VARIANT_DIRS[name] if (root / c).is_dir()), None)
    if folder is None:
        tried = ", ".join(str(root / c) for c in VARIANT_DIRS[name])
        raise FileNotFoundError(f"{name}: expected the image folder at one of: {tried}")
    local = folder.parent / "classnames.txt"
    if local.is_file() and folder.parent != root:
        wnids, names = read_wnid_classnames(local)
    else:
        wnids, names = imagenet_wnids(), _classnames.load("imagenet")

    if name == "imagenet_v2":
        test: list[Example] = []
        for d in list_class_dirs(folder):
            if not d.isdigit() or int(d) >= len(names):
                raise ValueError(
                    f"{name}: folder {folder / d} should be a label index 0..{len(names) - 1}"
                )
            test.extend(class_images(folder, d, int(d), folder))
    else:
        test = _wnid_examples(folder, wnids, name, folder)
    return ImageDataset(name=name, classnames=names, train=[], val=[], test=test)
