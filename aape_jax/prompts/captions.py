"""Human captions per image: COCO caption annotations and a plain JSONL format.

Both readers return {image key: [caption, ...]} with images in file order and each
image's captions stripped, without empties or exact repeats. The image key is COCO's
`file_name`, or the JSONL `image` field, to be joined with the dataset's image root.
The files may be local or a bucket's (``gs://``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from aape_jax import storage


# Longest list of offending items an error message spells out.
_MAX_LISTED = 20


def _listing(items: Sequence[Any]) -> str:
    """Comma-separated first items, then "... and N more" (COCO has ~80k images)."""
    shown = ", ".join(repr(x) for x in items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _cleaned(path: str | os.PathLike[str], raw: dict[str, list[str]]) -> dict[str, list[str]]:
    captions = {image: list(dict.fromkeys(c.strip() for c in caps if c.strip())) for image, caps in raw.items()}
    # An uncaptioned image would reach the aggregator with zero prompts (an all-masked
    # attention row), so it is refused here rather than turning into NaNs later.
    empty = [image for image, caps in captions.items() if not caps]
    if empty:
        raise ValueError(f"{path}: {len(empty)} image(s) without any caption: {_listing(empty)}")
    return captions


def read_coco_captions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read COCO caption annotations (e.g. `captions_train2014.json`): {file_name: captions}.

    Expects {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}.

    Raises:
      ValueError: naming `path`, on invalid JSON or structure, a repeated image id, a
        caption whose `image_id` is not among the images (the ids are listed), or
        images left without a caption (listed).
    """
    with storage.open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a COCO caption file with 'images' and 'annotations' lists")
    names: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise ValueError(f"{path}: images[{i}] needs an 'id' and a string 'file_name', got {image!r:.120}")
        if image["id"] in names:
            raise ValueError(f"{path}: image id {image['id']!r} appears more than once in 'images'")
        names[image["id"]] = image["file_name"]
    if not names:
        raise ValueError(f"{path}: holds no images")
    raw: dict[str, list[str]] = {name: [] for name in names.values()}
    unknown: dict[Any, None] = {}  # insertion-ordered set
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ValueError(f"{path}: annotations[{i}] needs an 'image_id' and a string 'caption', got {ann!r:.120}")
        if ann["image_id"] not in names:
            unknown[ann["image_id"]] = None
            continue
        raw[names[ann["image_id"]]].append(ann["caption"])
    if unknown:
        raise ValueError(f"{path}: captions refer to {len(unknown)} unknown image id(s): {_listing(list(unknown))}")
    return _cleaned(path, raw)


def read_jsonl_captions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read one {"image": key, "captions": [caption, ...]} object per line: {key: captions}.

    Blank lines are skipped; lines repeating an image key add to its captions.

    Raises:
      ValueError: naming `path` and the line number for a line that is not such an
        object; naming `path` and listing images left without any caption.
    """
    raw: dict[str, list[str]] = {}
    with storage.open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e
            if not isinstance(record, dict) or not isinstance(record.get("image"), str) \
                    or not isinstance(record.get("captions"), list) \
                    or not all(isinstance(c, str) for c in record["captions"]):
                raise ValueError(f'{path}:{lineno}: expected {{"image": str, "captions": [str, ...]}}, '
                                 f"got {line.strip():.120}")
            raw.setdefault(record["image"], []).extend(record["captions"])
    if not raw:
        raise ValueError(f"{path}: holds no images")
    return _cleaned(path, raw)
