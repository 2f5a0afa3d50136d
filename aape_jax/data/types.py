"""The data types every dataset source returns."""

from __future__ import annotations

import dataclasses

from aape_jax.clip.preprocess import ImageLike


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled image.

    Attributes:
      image: a path, or an in-memory image (generated datasets).
      label: class index into the dataset's `classnames`.
      key: stable identity of the image (its path relative to the dataset
        root, or a generated id); feature-store fingerprints hash it.
    """

    image: ImageLike
    label: int
    key: str


@dataclasses.dataclass
class ImageDataset:
    """A labelled image dataset with its splits.

    Attributes:
      name: dataset name (e.g. "caltech101", "synthetic").
      classnames: class names in label order.
      train: training examples.
      val: validation examples (may be empty).
      test: test examples.
    """

    name: str
    classnames: list[str]
    train: list[Example]
    val: list[Example]
    test: list[Example]
