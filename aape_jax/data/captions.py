"""Captioned-image datasets for retrieval: Karpathy JSON (COCO 2014, Flickr30k) and TFDS `coco_captions`.

Every image's captions (~5 human sentences) are its reference prompts for the
aggregator, and in evaluation each caption is one text to retrieve.

Sources:
- Karpathy split files `dataset_coco.json` / `dataset_flickr30k.json`
  (`{"dataset": ..., "images": [{"filepath"?, "filename", "split", "sentences":
  [{"raw", "tokens"}, ...], "imgid", ...}]}`) with the image folders: COCO's
  `ROOT/<filepath>/<filename>` (filepath `train2014` or `val2014`), Flickr30k's
  `ROOT/<filename>` (no `filepath`; ROOT is the `flickr30k-images` folder).
- TFDS `coco_captions` (its default config holds the Karpathy splits
  `train`, `restval`, `val`, `test`); tensorflow-datasets (and TensorFlow, to
  read the records) is imported only when this source is used.

Karpathy's `restval` images (30,504 COCO val2014 images outside val/test) go
into `train`, as is standard practice (Karpathy & Fei-Fei 2015 and the CLIP-era
retrieval papers train on 113,287 COCO images). Test sets are COCO 5k and
Flickr30k 1k.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aape_jax import atomic, storage
from aape_jax.clip.preprocess import ImageLike
from aape_jax.data.folder import list_entries
from aape_jax.data.types import Example

__all__ = [
    "CaptionedImage",
    "CaptionDataset",
    "KARPATHY_SPLITS",
    "read_karpathy",
    "captioned_images_from_records",
    "load_tfds_coco_captions",
    "as_examples",
    "limit_captions",
]

# Karpathy split names -> our splits ("restval" trains, as is standard).
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image with its captions.

    Attributes:
      image: a path (datasets on disk) or an in-memory image (generated sets, TFDS without export).
      captions: its captions, in file order, stripped; never empty.
      key: stable identity (path relative to the dataset root, or a generated id); feature-store
        fingerprints hash it.
    """

    image: ImageLike
    captions: tuple[str, ...]
    key: str


@dataclasses.dataclass
class CaptionDataset:
    """Captioned images per split.

    Attributes:
      name: "coco", "flickr30k", "synthetic_captions", ...
      train: training images (Karpathy train + restval).
      val: validation images.
      test: test images (COCO 5k, Flickr30k 1k).
    """

    name: str
    train: list[CaptionedImage]
    val: list[CaptionedImage]
    test: list[CaptionedImage]

    def split(self, name: str) -> list[CaptionedImage]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split {name!r} is not one of 'train', 'val', 'test'")
        return getattr(self, name)


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(x) for x in items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _sentence_text(sentence: Any, where: str) -> str:
    if isinstance(sentence, str):
        return sentence
    if isinstance(sentence, Mapping):
        if isinstance(sentence.get("raw"), str):
            return sentence["raw"]
        if isinstance(sentence.get("tokens"), list):
            return " ".join(str(t) for t in sentence["tokens"])
    raise ValueError(f"{where}: a sentence needs a string 'raw' (or a 'tokens' list), got {sentence!r:.120}")


def read_karpathy(annotations: str | os.PathLike, image_root: str | os.PathLike, *,
                  check_files: bool = True, name: str | None = None) -> CaptionDataset:
    """Reads a Karpathy split file (COCO or Flickr30k) into train (train + restval), val and test.

    Args:
      annotations: `dataset_coco.json` or `dataset_flickr30k.json`.
      image_root: COCO: the folder holding `train2014/` and `val2014/`;
        Flickr30k: the folder holding the `.jpg` files.
      check_files: check that every image file exists (one `stat` per image; on a bucket one listing
        per image folder).
      name: dataset name (default: the file's "dataset" field).

    Raises:
      ValueError: naming the file, for invalid JSON or structure, an unknown
        split, a repeated image, or images without any caption (listed).
      FileNotFoundError: listing the image files that do not exist.
    """
    path = os.fspath(annotations)
    try:
        with storage.open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a Karpathy split file {{'images': [...], 'dataset': ...}}")
    splits: dict[str, list[CaptionedImage]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    uncaptioned: list[str] = []
    missing: list[str] = []
    listed: dict[str, set[str]] = {}  # bucket folder -> the names of its files

    def is_file(full: str) -> bool:
        if not storage.is_remote(full):
            return os.path.isfile(full)
        # A request per image would take hours for COCO's 123k; its two folders are listed once instead.
        folder, name = os.path.split(full)
        if folder not in listed:
            try:
                listed[folder] = set(list_entries(folder)[1])
            except FileNotFoundError:
                listed[folder] = set()
        return name in listed[folder]

    for i, image in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
            raise ValueError(f"{where} needs a string 'filename', got {image!r:.120}")
        split = image.get("split")
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"{where} ({image['filename']}): split {split!r} is not one of {sorted(KARPATHY_SPLITS)}")
        key = os.path.join(image.get("filepath") or "", image["filename"])
        if key in seen:
            raise ValueError(f"{where}: image {key!r} appears more than once")
        seen.add(key)
        sentences = image.get("sentences", [])
        if not isinstance(sentences, list):
            raise ValueError(f"{where} ({key}): 'sentences' must be a list")
        captions = tuple(c.strip() for c in (_sentence_text(s, f"{where} ({key})") for s in sentences) if c.strip())
        if not captions:
            uncaptioned.append(key)
            continue
        full = os.path.join(os.fspath(image_root), key)
        if check_files and not is_file(full):
            missing.append(full)
        splits[KARPATHY_SPLITS[split]].append(CaptionedImage(image=full, captions=captions, key=key))
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} image(s) without any caption: {_listing(uncaptioned)}")
    if missing:
        raise FileNotFoundError(
            f"{path}: {len(missing)} image file(s) named in the annotations do not exist under {image_root}: "
            f"{_listing(missing)}")
    if not seen:
        raise ValueError(f"{path}: holds no images")
    return CaptionDataset(name=name or str(data.get("dataset", "karpathy")), **splits)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def captioned_images_from_records(records: Iterable[Mapping[str, Any]], source: str, *,
                                  image_dir: str | os.PathLike | None = None) -> list[CaptionedImage]:
    """TFDS `coco_captions`-style numpy records -> captioned images.

    A record holds `image/filename` (bytes or str), `captions: {"text": [...]}`
    and `image`: a uint8 [H, W, 3] array, or the encoded file's bytes (when
    read with `decoders={"image": tfds.decode.SkipDecoding()}`).

    With `image_dir`, each image is written there once (encoded bytes verbatim,
    arrays as PNG) and referenced by path, so a 100k-image split does not sit in
    memory; without it, images stay in memory (small splits, tests).

    Raises:
      ValueError: naming `source`, for a record without filename or captions, an
        image without any caption, or a repeated filename.
    """
    import PIL.Image

    out: list[CaptionedImage] = []
    seen: set[str] = set()
    uncaptioned: list[str] = []
    for i, record in enumerate(records):
        try:
            filename = _text(record["image/filename"])
            texts = record["captions"]["text"]
            image = record["image"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: record {i} lacks 'image/filename', 'captions/text' or 'image' ({e!r})") from e
        if filename in seen:
            raise ValueError(f"{source}: image {filename!r} appears more than once")
        seen.add(filename)
        captions = tuple(c for c in (_text(t).strip() for t in np.asarray(texts, dtype=object).ravel()) if c)
        if not captions:
            uncaptioned.append(filename)
            continue
        encoded = isinstance(image, (bytes, np.bytes_))
        if image_dir is not None:
            target = os.path.join(os.fspath(image_dir), filename)
            if not encoded:
                target = os.path.splitext(target)[0] + ".png"
            if not storage.path(target).is_file():
                with atomic.atomic_open(target, "wb") as f:
                    if encoded:
                        f.write(bytes(image))
                    else:
                        PIL.Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG")
            image = target
        elif encoded:
            image = np.asarray(PIL.Image.open(io.BytesIO(bytes(image))).convert("RGB"))
        out.append(CaptionedImage(image=image, captions=captions, key=filename))
    if uncaptioned:
        raise ValueError(f"{source}: {len(uncaptioned)} image(s) without any caption: {_listing(uncaptioned)}")
    return out


def load_tfds_coco_captions(split: str, *, data_dir: str | None = None, image_dir: str | None = None,
                            dataset: Iterable[Mapping[str, Any]] | None = None) -> list[CaptionedImage]:
    """COCO 2014 Karpathy split `split` ("train" includes "restval") from TFDS `coco_captions`.

    Args:
      split: "train" (= TFDS train + restval), "val" or "test".
      data_dir: TFDS data directory (prepared with `tfds build coco_captions`).
      image_dir: write images here once and reference them by path (recommended for train).
      dataset: records to use instead of TFDS (tests, or an already-open source).

    Raises:
      ImportError: tensorflow-datasets (or TensorFlow) is missing, with the install command.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r} is not one of 'train', 'val', 'test'")
    if dataset is None:
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(
                "the TFDS coco_captions source needs tensorflow-datasets and TensorFlow: "
                "`pip install tensorflow-datasets tensorflow`, then `tfds build coco_captions`; "
                "or use the plain layout (dataset.source='karpathy': image folders + dataset_coco.json), "
                "which needs neither") from e
        ds = tfds.load("coco_captions", split="train+restval" if split == "train" else split, data_dir=data_dir,
                       shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        dataset = tfds.as_numpy(ds)
    return captioned_images_from_records(dataset, f"tfds coco_captions[{split}]", image_dir=image_dir)


def limit_captions(images: Sequence[CaptionedImage], max_captions: int) -> list[CaptionedImage]:
    """Keeps each image's first `max_captions` captions (0: all). COCO has a few images with 6-7."""
    if max_captions <= 0:
        return list(images)
    return [dataclasses.replace(im, captions=im.captions[:max_captions]) for im in images]


def as_examples(images: Sequence[CaptionedImage]) -> list[Example]:
    """Images as `Example`s for the feature extractor; label = the image's index (its caption-table row)."""
    return [Example(image=im.image, label=i, key=im.key) for i, im in enumerate(images)]
