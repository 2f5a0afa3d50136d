"""TensorFlow Datasets builders as a dataset source, read without TensorFlow.

:func:`load_tfds` opens ``tfds.builder(tfds_name, data_dir=...)`` (the
``tensorflow_datasets`` package is imported only here, lazily) and reads each
split through ``builder.as_data_source(split)``: random access over
ArrayRecord files, decoded with NumPy/PIL, **no TensorFlow needed**.  That
requires the dataset to be prepared in the ``array_record`` format, e.g.
``builder.download_and_prepare(file_format="array_record")`` or
``tfds build --file_format=array_record``.  (Preparing some builders, e.g.
``sun397``, runs TensorFlow ops; reading prepared data does not.
``as_dataset`` and ``ImageFolder`` need TensorFlow and are not used.)

Dataset names map to TFDS builders where one exists (:data:`TFDS_NAMES`);
any other name is passed to TFDS as is and read with TFDS's own class names
and labels.  ``fgvc_aircraft`` has no builder and TFDS's ``ucf101`` is the
video dataset (CoOp uses mid-frames), so those two are refused.

**Labels follow this project's class lists.**  For the datasets of
:mod:`aape_jax.data.classnames`, each TFDS class is mapped by name onto
CoOp's list (:func:`aape_jax.data.classnames.load`) and relabelled: e.g.
TFDS's Caltech101 has 102 lower-cased classes including ``background_google``
and ``faces_easy``; their examples are dropped and ``airplanes`` becomes
CoOp's ``airplane`` at CoOp's label; EuroSAT's ``AnnualCrop`` becomes
``Annual Crop Land``; SUN397's ``/b/bakery/shop`` becomes ``shop bakery``;
ImageNet and its variants (TFDS labels are wnids) use ImageNet's sorted wnid
order and CLIP's names.  So base/new class halves match CoOp's.  **The images
and splits do not**: TFDS splits are not CoOp's ``split_zhou_*`` files, so
accuracies from this source are not comparable with CoOp's published numbers
(or with CoOp-layout runs); use them for development or for datasets without
a CoOp split.

Splits: ``train`` <- TFDS ``train``; ``val`` <- ``validation``; ``test`` <-
``test``, or ``validation`` when there is no test split (imagenet2012,
food101; ``val`` is then empty).  ``splits=`` overrides the mapping, e.g.
``{"train": "train[:80%]", "test": "train[80%:]"}`` for EuroSAT, which has a
train split only.

Images are read lazily: ``Example.image`` is a
:class:`~aape_jax.clip.preprocess.RecordImage` that reads its record when it
is decoded (by the extraction's worker threads, :mod:`aape_jax.data.pipeline`),
so memory is bounded by the pipeline's prefetch depth, not by the split. Only
the labels are read up front (with TFDS's ``SkipDecoding`` for the image, so
no image is decoded then, when this module opens the builder itself).
``Example.key`` is ``"tfds/<name>/<tfds split>/<index in that split>"``; a
record that cannot be decoded is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from aape_jax.clip.preprocess import RecordImage
from aape_jax.data import classnames as _classnames
from aape_jax.data.types import Example, ImageDataset

__all__ = ["TFDS_NAMES", "NO_TFDS", "tfds_to_coop_name", "load_tfds"]

TFDS_NAMES: dict[str, str] = {
    "imagenet": "imagenet2012",
    "caltech101": "caltech101",
    "oxford_pets": "oxford_iiit_pet",
    "stanford_cars": "cars196",
    "flowers102": "oxford_flowers102",
    "food101": "food101",
    "sun397": "sun397/tfds",
    "dtd": "dtd",
    "eurosat": "eurosat/rgb",
    "imagenet_v2": "imagenet_v2",
    "imagenet_sketch": "imagenet_sketch",
    "imagenet_a": "imagenet_a",
    "imagenet_r": "imagenet_r",
}
"""This project's dataset name -> TFDS builder name (``name/config``)."""

NO_TFDS: dict[str, str] = {
    "fgvc_aircraft": "TFDS has no FGVC-Aircraft builder",
    "ucf101": "TFDS's ucf101 is the video dataset; CoOp uses its mid-frames (use source='coop')",
}

_CALTECH_DROP = {"background_google", "faces_easy"}
_CALTECH_RENAME = {"airplanes": "airplane", "faces": "face", "leopards": "leopard", "motorbikes": "motorbike"}
_EUROSAT = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


_RENAMERS: dict[str, Callable[[str], str | None]] = {
    "caltech101": lambda n: None if n.lower() in _CALTECH_DROP else _CALTECH_RENAME.get(n.lower(), n.lower()),
    "oxford_pets": str.lower,
    "stanford_cars": lambda n: " ".join(reversed(n.rsplit(" ", 1))),  # "... 2000" -> "2000 ..."
    "flowers102": lambda n: n,
    "food101": lambda n: n,
    "sun397": lambda n: " ".join(reversed(n.strip("/").split("/")[1:])),  # "/b/bakery/shop" -> "shop bakery"
    "dtd": lambda n: n,
    "eurosat": lambda n: _EUROSAT.get(n, n),
}


def tfds_to_coop_name(name: str, tfds_class: str) -> str | None:
    """CoOp's class name for TFDS class `tfds_class` of dataset `name`.

    None means CoOp drops the class (Caltech101's background and easy faces).
    ImageNet and its variants are mapped by wnid, not by this function.
    """
    return _RENAMERS[name](tfds_class)


def _label_map(name: str, tfds_names: list[str]) -> tuple[list[str], list[int | None]]:
    """(our classnames, our label for each TFDS label or None to drop)."""
    if name == "imagenet" or name in _classnames.VARIANTS:
        index = {w: i for i, w in enumerate(_classnames.imagenet_wnids())}
        bad = [n for n in tfds_names if n not in index]
        if bad:
            raise ValueError(f"{name}: TFDS labels {bad[:5]} are not ImageNet wnids")
        return _classnames.load("imagenet"), [index[n] for n in tfds_names]
    if name in _RENAMERS:
        ours = _classnames.load(name)
        index = {c: i for i, c in enumerate(ours)}
        out: list[int | None] = []
        for n in tfds_names:
            c = tfds_to_coop_name(name, n)
            if c is not None and c not in index:
                raise ValueError(
                    f"{name}: TFDS class {n!r} (-> {c!r}) is not in this project's "
                    f"{name} class list; cannot map TFDS labels onto CoOp's"
                )
            out.append(None if c is None else index[c])
        return ours, out
    return list(tfds_names), list(range(len(tfds_names)))


def _split_names(builder: Any) -> list[str]:
    """The builder's split names; probed with ``as_data_source`` when it has no
    split metadata."""
    try:
        return [str(s) for s in builder.info.splits.keys()]
    except Exception:  # noqa: BLE001 (no metadata: probe the usual names)
        found = []
        for s in ("train", "validation", "val", "test"):
            try:
                builder.as_data_source(split=s)
            except Exception:  # noqa: BLE001
                continue
            found.append(s)
        return found


def _pick(available: list[str], *cands: str) -> str | None:
    return next((c for c in cands if c in available), None)


def _record_image(source: Any, index: int, key: str) -> RecordImage:
    """Record `index` of `source`'s image, read when decoded: its encoded bytes or its uint8 array."""

    def read() -> bytes | np.ndarray:
        image = source[index]["image"]
        if isinstance(image, (bytes, bytearray)):
            return bytes(image)
        arr = np.asarray(image)
        if arr.dtype == object and arr.ndim == 0:  # SkipDecoding's bytes, as a numpy scalar
            return bytes(arr.item())
        if arr.dtype != np.uint8:
            raise ValueError(f"{key}: expected a uint8 image, got dtype {arr.dtype}")
        return arr

    return RecordImage(read=read, name=key)


def load_tfds(
    name: str,
    data_dir: str | None = None,
    builder: Any = None,
    splits: Mapping[str, str] | None = None,
) -> ImageDataset:
    """Reads dataset `name` from TFDS (see the module docstring).

    Args:
      name: this project's dataset name (mapped via :data:`TFDS_NAMES`) or
        any TFDS builder name.
      data_dir: TFDS data directory (None: TFDS's default).
      builder: a ready builder (or any object with ``info.features["label"].names``
        and ``as_data_source(split)`` returning a sequence of dicts with
        ``"image"`` and ``"label"``); skips ``tfds.builder``.
      splits: ``{"train"|"val"|"test": tfds_split}`` replacing the default
        mapping; a key left out gives an empty split.

    Raises:
      ValueError: a dataset TFDS cannot provide, or TFDS classes that do not
        map onto this project's list.
      ImportError: `builder` is None and tensorflow_datasets is not installed.
    """
    if name in NO_TFDS:
        raise ValueError(f"{name}: {NO_TFDS[name]}")
    tfds_name = TFDS_NAMES.get(name, name)
    if builder is None:
        try:
            import tensorflow_datasets as tfds  # noqa: PLC0415 (optional dependency)
        except ImportError as e:
            raise ImportError(
                f"{name}: the TFDS source needs tensorflow-datasets, the [tfds] extra: `pip install -e \".[tfds]\"` "
                "from a clone (TensorFlow itself is not needed to read array_record data)"
            ) from e
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        # Labels are read for every record up front; the images only when decoded.
        open_kwargs = {"decoders": {"image": tfds.decode.SkipDecoding()}}
    else:
        open_kwargs = {}

    tfds_names = list(builder.info.features["label"].names)
    classnames, remap = _label_map(name, tfds_names)

    if splits is None:
        avail = _split_names(builder)
        test = _pick(avail, "test")
        val = _pick(avail, "validation", "val")
        if test is None and val is not None:
            test, val = val, None
        splits = {k: v for k, v in (("train", _pick(avail, "train")), ("val", val), ("test", test)) if v}

    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for ours, tsplit in splits.items():
        if ours not in out:
            raise ValueError(f"splits keys must be train/val/test, got {ours!r}")
        try:
            source = builder.as_data_source(split=tsplit, **open_kwargs)
        except Exception as e:
            raise RuntimeError(
                f"{name}: could not open TFDS split {tsplit!r} of {tfds_name} as a data "
                "source; prepare it in array_record format "
                "(builder.download_and_prepare(file_format='array_record'))"
            ) from e
        for i in range(len(source)):
            rec = source[i]
            lab = remap[int(rec["label"])]
            if lab is None:
                continue
            key = f"tfds/{name}/{tsplit}/{i}"
            out[ours].append(Example(image=_record_image(source, i, key), label=lab, key=key))
    return ImageDataset(name=name, classnames=classnames, **out)
