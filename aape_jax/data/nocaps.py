"""NoCaps validation set (4,500 Open Images images, 10 captions each, in three domains).

The captions file `nocaps_val_4500_captions.json` (nocaps.s3.amazonaws.com) is in
COCO captions format, as nocaps.org's download page documents it:
`{"licenses", "info", "images": [{"id": int, "open_images_id": str, "file_name": str,
"coco_url", "height", "width", "license", "date_captured", "domain"}, ...],
"annotations": [{"image_id": int, "id": int, "caption": str}, ...]}`. The page's
sample entry omits `domain`; the released file has it on every image
("in-domain", "near-domain" or "out-domain"; 648 / 2,938 / 914 images), and
NoCaps' scores (EvalAI) are reported per domain and overall. Images are
`ROOT/<file_name>` (`<open_images_id>.jpg`; the Open Images validation images).

The test split's image info has no `annotations` (its captions are held out on
the evaluation server), so only val is read here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from aape_jax import storage
from aape_jax.data.captions import CaptionedImage
from aape_jax.data.folder import missing_files
from aape_jax.errors import DataError, listing

__all__ = ["DOMAINS", "NoCapsImage", "read_nocaps"]

DOMAINS = ("in-domain", "near-domain", "out-domain")


@dataclasses.dataclass(frozen=True)
class NoCapsImage:
    """One NoCaps image with its captions and domain.

    Attributes:
      captioned: the image (its full path), its captions in file order and its key (the file_name).
      domain: "in-domain", "near-domain" or "out-domain" (`DOMAINS`).
      image_id: the file's integer image id; predictions for the evaluation server are keyed by it.
    """

    captioned: CaptionedImage
    domain: str
    image_id: int



def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true would pass isinstance(.., int)




def read_nocaps(annotations_path: str | os.PathLike, image_root: str | os.PathLike, *,
                check_files: bool = True) -> list[NoCapsImage]:
    """Reads `nocaps_val_4500_captions.json`: every image with its captions and domain, in file order.

    Args:
      annotations_path: the captions file (local or gs://).
      image_root: the folder holding the images named by each entry's `file_name`.
      check_files: check that every image file exists (one listing per image folder).

    Raises:
      ValueError: naming the file, for invalid JSON, a missing or mistyped key (the first offending entry),
        a repeated image id or file name, captions of an image id the file does not list, an unknown
        domain, or images without any caption (listed, up to 10).
      FileNotFoundError (`DataError`): the captions file, or image files (listed), do not exist.
    """
    path = os.fspath(annotations_path)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise DataError(f"NoCaps captions file {path} does not exist",
                        hint="download nocaps_val_4500_captions.json (see nocaps.org/download)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a COCO-format captions file {{'images': [...], 'annotations': [...]}}")
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: has no 'annotations' list; the NoCaps test image info carries no captions "
                         "(only nocaps_val_4500_captions.json can be read)")

    images: dict[int, dict[str, Any]] = {}
    names: set[str] = set()
    bad_domains: list[str] = []
    for i, image in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise ValueError(f"{where} needs an integer 'id' and a string 'file_name', got {image!r:.160}")
        if "domain" not in image:
            raise ValueError(f"{where} (image {image['id']}, {image['file_name']}) has no 'domain'; "
                             f"expected one of {DOMAINS}")
        if image["id"] in images:
            raise ValueError(f"{where}: image id {image['id']} appears more than once")
        if image["file_name"] in names:
            raise ValueError(f"{where}: file_name {image['file_name']!r} appears more than once")
        if image["domain"] not in DOMAINS:
            bad_domains.append(f"{image['id']} ({image['domain']!r})")
        images[image["id"]] = image
        names.add(image["file_name"])
    if bad_domains:
        raise ValueError(f"{path}: {len(bad_domains)} image(s) with a domain not in {DOMAINS}: "
                         f"{listing(bad_domains, quote=False)}")
    if not images:
        raise ValueError(f"{path}: holds no images")

    captions: dict[int, list[str]] = {}
    orphans: list[int] = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("image_id")) or not isinstance(ann.get("caption"), str):
            raise ValueError(f"{path}: annotations[{i}] needs an integer 'image_id' and a string 'caption', "
                             f"got {ann!r:.160}")
        if ann["image_id"] not in images:
            orphans.append(ann["image_id"])
        elif ann["caption"].strip():
            captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    if orphans:
        orphans = list(dict.fromkeys(orphans))
        raise ValueError(f"{path}: captions of {len(orphans)} image id(s) the file's 'images' do not list: "
                         f"{listing(orphans)}")
    uncaptioned = [f"{image_id} ({image['file_name']})" for image_id, image in images.items()
                   if image_id not in captions]
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} image(s) without any caption: "
                         f"{listing(uncaptioned, quote=False)}")

    root = os.fspath(image_root)
    out = [NoCapsImage(captioned=CaptionedImage(image=os.path.join(root, image["file_name"]),
                                                captions=tuple(captions[image_id]), key=image["file_name"]),
                       domain=image["domain"], image_id=image_id)
           for image_id, image in images.items()]
    if check_files:
        missing = missing_files([im.captioned.image for im in out])
        if missing:
            raise DataError(f"{path}: {len(missing)} of {len(out)} image file(s) do not exist under {root}: "
                            f"{listing(missing)}",
                            hint="image_root must hold the Open Images validation images named by 'file_name'")
    return out
