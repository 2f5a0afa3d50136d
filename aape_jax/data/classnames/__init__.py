"""Canonical class-name lists of the benchmark datasets, in label order.

The lists follow CoOp's conventions (the names CoOp's dataset readers put in
its ``split_zhou_*.json`` files), one ``<name>.txt`` per dataset, one name a
line, shipped as package data:

* ``imagenet``: CLIP's cleaned ImageNet names (CoOp's ``classnames.txt``),
  1000 in the order of the sorted WordNet ids.  Two names repeat, as in CLIP's
  list: ``missile`` (classes 657 and 744) and ``sunglasses`` (836 and 837).
* ``caltech101``: the folder names, Python-sorted (capitalised folders first),
  without ``BACKGROUND_Google`` and ``Faces_easy``, with ``airplanes ->
  airplane``, ``Faces -> face``, ``Leopards -> leopard``, ``Motorbikes ->
  motorbike`` (100 classes).
* ``oxford_pets``: breed from the file names, lower-cased (``american_bulldog``).
* ``stanford_cars``: ``cars_meta.mat`` names with the year moved to the front
  (``2000 AM General Hummer SUV``).
* ``flowers102``: CoOp's ``cat_to_name.json`` (including its odd
  ``pink-yellow dahlia?``).
* ``food101``: Python-sorted folder names (``apple_pie``).
* ``fgvc_aircraft``: ``variants.txt`` (100 variants).
* ``sun397``: ``ClassName.txt`` with CoOp's renaming ``/b/bakery/shop ->
  shop bakery`` (underscores kept).
* ``dtd``: the 47 sorted folder names.
* ``eurosat``: CoOp's descriptive names (``Annual Crop Land``, ...).
* ``ucf101``: ``classInd.txt`` names split at capitals and joined with ``_``
  (``Apply_Eye_Makeup``).

Underscores are kept where CoOp keeps them; prompt code replaces them with
spaces.  Spelling differences with other resources (e.g. CuPL's description
files) are resolved by an alias table elsewhere, not here.

The four ImageNet variants (:data:`VARIANTS`) use ImageNet's 1000 names;
ImageNet-A and -R cover 200 of those classes, given by :func:`imagenet_subset`.
"""

from __future__ import annotations

import functools
import importlib.resources

__all__ = [
    "DATASETS",
    "VARIANTS",
    "load",
    "imagenet_wnids",
    "imagenet_subset",
]

DATASETS: tuple[str, ...] = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "flowers102",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
"""The 11 base-to-new datasets, in the order of CoOp's tables."""

VARIANTS: tuple[str, ...] = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
"""The ImageNet variants (domain generalisation; test-only, ImageNet's labels)."""

# Variants whose images cover only part of ImageNet's classes.
_SUBSET_FILES = {"imagenet_a": "imagenet_a_wnids.txt", "imagenet_r": "imagenet_r_wnids.txt"}


@functools.lru_cache(maxsize=None)
def _read(filename: str) -> tuple[str, ...]:
    text = importlib.resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def load(name: str) -> list[str]:
    """The class names of dataset `name`, in label order (a fresh list).

    An ImageNet variant gives ImageNet's 1000 names (its labels are ImageNet's).

    Raises:
      KeyError: unknown name; the message lists the known ones.
    """
    if name in VARIANTS:
        name = "imagenet"
    if name not in DATASETS:
        raise KeyError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS + VARIANTS)}"
        )
    return list(_read(f"{name}.txt"))


def imagenet_wnids() -> list[str]:
    """ImageNet's 1000 WordNet ids, sorted; label ``i`` is ``imagenet_wnids()[i]``."""
    return list(_read("imagenet_wnids.txt"))


def imagenet_subset(name: str) -> list[int]:
    """ImageNet label indices (sorted) that variant `name` covers.

    ``imagenet_a`` and ``imagenet_r`` have 200 classes each; ``imagenet``,
    ``imagenet_v2`` and ``imagenet_sketch`` cover all 1000.  Evaluation on -A
    and -R restricts the candidate classes to these (as CoOp does).

    Raises:
      KeyError: `name` is not ImageNet or one of its variants.
    """
    if name in ("imagenet", "imagenet_v2", "imagenet_sketch"):
        return list(range(1000))
    if name not in _SUBSET_FILES:
        raise KeyError(
            f"no ImageNet class subset for {name!r}; known: imagenet, "
            f"{', '.join(VARIANTS)}"
        )
    index = {w: i for i, w in enumerate(_read("imagenet_wnids.txt"))}
    return sorted(index[w] for w in _read(_SUBSET_FILES[name]))
