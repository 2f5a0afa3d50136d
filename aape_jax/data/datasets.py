"""One entry point over the dataset sources: :func:`load_dataset`.

Sources:

* ``"coop"`` (default): CoOp's folder layout under a data root: the split-file
  datasets and FGVC-Aircraft (:mod:`.coop`), ImageNet and its variants
  (:mod:`.imagenet`).  Use it for numbers comparable with CoOp-family papers.
* ``"tfds"``: a TFDS builder read without TensorFlow (:mod:`.tfds_source`);
  `root` is the TFDS ``data_dir`` (None: TFDS's default).  Labels follow
  CoOp's class lists, images and splits do not.
* ``"folder"``: a generic ``root/<class>/*.jpg`` tree (:mod:`.folder`); `root`
  is that folder and `name` any label for it.

The ImageNet variants are test-only (``train == val == []``) and labelled in
ImageNet's 1000 classes; :func:`imagenet_subset` gives the 200 classes of
ImageNet-A and -R.
"""

from __future__ import annotations

import os

from aape_jax.data.classnames import DATASETS, VARIANTS, imagenet_subset
from aape_jax.data.coop import load_coop
from aape_jax.data.folder import load_folder
from aape_jax.data.imagenet import load_imagenet, load_imagenet_variant
from aape_jax.data.tfds_source import load_tfds
from aape_jax.data.types import ImageDataset
from aape_jax.errors import ConfigError

__all__ = ["ALL_DATASETS", "SOURCES", "DATASETS", "VARIANTS", "load_dataset", "imagenet_subset"]

ALL_DATASETS: tuple[str, ...] = DATASETS + VARIANTS
SOURCES: tuple[str, ...] = ("coop", "tfds", "folder")


def load_dataset(name: str, root: str | os.PathLike | None, source: str = "coop") -> ImageDataset:
    """Loads dataset `name` from `root` with `source` (see the module docstring).

    Raises:
      ValueError: unknown `source`, or (sources "coop"/"tfds") unknown `name`;
        the message lists the valid ones.
      FileNotFoundError: a file or folder the layout needs is missing; the
        message names the dataset and the path.
    """
    if source == "folder":
        if root is None:
            raise ConfigError("source='folder' needs root (the folder of class sub-folders)",
                              hint="set --config.dataset.root")
        return load_folder(root, name=name)
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}",
                          hint="set --config.dataset.source")
    if name not in ALL_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(ALL_DATASETS)}",
                          hint="set --config.dataset.name (or dataset=NAME in the config argument)")

    if source == "tfds":
        return load_tfds(name, data_dir=None if root is None else os.fspath(root))

    # source == "coop"
    if root is None:
        raise ConfigError(f"{name}: source='coop' needs root (the CoOp data root)",
                          hint="set --config.dataset.root to the folder that holds the CoOp dataset folders")
    if name == "imagenet":
        return load_imagenet(root)
    if name in VARIANTS:
        return load_imagenet_variant(name, root)
    return load_coop(name, root)
