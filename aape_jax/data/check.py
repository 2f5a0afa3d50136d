"""`python -m aape_jax.data.check NAME --root DIR`: is a CoOp-layout dataset complete, before a long run?

NAME is a dataset name as the configs use it (``dataset=NAME``,
:data:`aape_jax.data.datasets.ALL_DATASETS`); DIR is the CoOp data root
(``$DATA`` of CoOp's ``DATASETS.md``; may be ``gs://...``).  What is checked,
with the project's own readers and layout tables (:mod:`.coop`,
:mod:`.imagenet`):

* split-file datasets (:data:`.coop.SPLIT_FILE_DATASETS`): the image folder and
  the ``split_zhou_*.json``, and every image the split file names (one folder
  listing per image folder, :func:`.folder.missing_files`);
* FGVC-Aircraft: ``images/``, ``variants.txt``, ``images_variant_{train,val,test}.txt``
  and every image they name;
* ImageNet: ``imagenet/classnames.txt`` and ``imagenet/images/{train,val}/``
  with one ``<wnid>/`` folder per class each; images lying directly in
  ``val/`` (ImageNet's val archive as it ships) are reported, since the reader
  would see an empty test set;
* the variants: their image folder (:data:`.imagenet.VARIANT_DIRS`) and one
  class folder per class they cover (200 for -A and -R, 1000 for V2 and Sketch).

Printed: the image counts per split (train/val/test) and the number of
classes; each kind of missing path (relative to DIR) with its first ``--limit``
paths and how many more; other problems (a malformed split file, folders that
are no class, empty class folders); and for what is missing, where CoOp's
``DATASETS.md`` says to get it.  The last stdout line is a JSON object
``{"dataset", "root", "complete", "counts", "classes", "missing", "problems"}``
(``missing``/``problems``: how many).

Exit status: 0 when the dataset is complete, 1 when something is missing or
wrong, 2 on unusable input (unknown NAME, a root that is not a folder): the
message and a hint go to stderr.

:func:`check` gives the same as a :class:`Report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import posixpath
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from etils import epath

from aape_jax import errors, storage
from aape_jax.data import coop, imagenet
from aape_jax.data.classnames import VARIANTS, imagenet_subset, imagenet_wnids
from aape_jax.data.datasets import ALL_DATASETS
from aape_jax.data.folder import IMAGE_EXTENSIONS, list_entries, missing_files
from aape_jax.data.types import Example
from aape_jax.errors import ConfigError, DataError

__all__ = ["DATASETS_MD", "SOURCES", "Source", "Missing", "Report", "check", "format_report", "main"]

DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where CoOp's ``DATASETS.md`` says a dataset's files come from.

    Attributes:
      section: the heading of its section in ``DATASETS.md``.
      images: how to get the images (paths relative to the data root).
      split: how to get the split file (or class-name file); "" when none is needed.
    """

    section: str
    images: str
    split: str = ""

    @property
    def url(self) -> str:
        return f"{DATASETS_MD}#{re.sub(r'[^a-z0-9-]', '', self.section.lower())}"


def _drive(name: str, file_id: str) -> str:
    """The split-file hint of a split-file dataset: CoOp's Google Drive file, put where :mod:`.coop` reads it."""
    ddir, _, sfile = coop.SPLIT_FILE_DATASETS[name]
    return f"{sfile} from CoOp's Google Drive, https://drive.google.com/file/d/{file_id}/view, into {ddir}/"


_FGVC_ARCHIVE = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"

# From CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md).
SOURCES: dict[str, Source] = {
    "imagenet": Source(
        "ImageNet",
        "ILSVRC-2012 from https://image-net.org (account needed): extract the train and val sets into "
        "imagenet/images/train/ and imagenet/images/val/, one <wnid>/ folder per class in each",
        "classnames.txt from CoOp's Google Drive, "
        "https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view, into imagenet/"),
    "caltech101": Source(
        "Caltech101",
        "101_ObjectCategories.tar.gz from "
        "http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz, extracted in caltech-101/",
        _drive("caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")),
    "oxford_pets": Source(
        "OxfordPets",
        "images.tar.gz (and annotations.tar.gz) from https://www.robots.ox.ac.uk/~vgg/data/pets/data/, "
        "extracted in oxford_pets/",
        _drive("oxford_pets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")),
    "stanford_cars": Source(
        "StanfordCars",
        "cars_train.tgz and cars_test.tgz from http://ai.stanford.edu/~jkrause/car196/, extracted in "
        "stanford_cars/ (cars_train/, cars_test/); if that site is down, use a mirror of the same archives",
        _drive("stanford_cars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT")),
    "flowers102": Source(
        "Flowers102",
        "102flowers.tgz from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz, extracted in "
        "oxford_flowers/ (jpg/)",
        _drive("flowers102", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT")),
    "food101": Source(
        "Food101",
        "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/, extracted in the "
        "data root (food-101/images/)",
        _drive("food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")),
    "fgvc_aircraft": Source(
        "FGVCAircraft",
        f"fgvc-aircraft-2013b.tar.gz from {_FGVC_ARCHIVE}: move its data/ folder into the data root, "
        "renamed fgvc_aircraft/",
        "variants.txt and images_variant_{train,val,test}.txt are in the same archive's data/ folder "
        f"({_FGVC_ARCHIVE}); CoOp uses no split json for it"),
    "sun397": Source(
        "SUN397",
        "SUN397.tar.gz from http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz, extracted in sun397/",
        _drive("sun397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")),
    "dtd": Source(
        "DTD",
        "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz, extracted "
        "in the data root (dtd/images/)",
        _drive("dtd", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")),
    "eurosat": Source(
        "EuroSAT",
        "EuroSAT.zip (RGB) from http://madm.dfki.de/files/sentinel/EuroSAT.zip, extracted in eurosat/ (2750/)",
        _drive("eurosat", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")),
    "ucf101": Source(
        "UCF101",
        "UCF-101-midframes.zip (CoOp's middle frames) from CoOp's Google Drive, "
        "https://drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O/view, extracted in ucf101/",
        _drive("ucf101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")),
    "imagenet_v2": Source(
        "ImageNetV2",
        "imagenetv2-matched-frequency.tar.gz from "
        "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz "
        "(github.com/modestyachts/ImageNetV2), extracted in imagenetv2/"),
    "imagenet_sketch": Source(
        "ImageNet-Sketch",
        "ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch, extracted to imagenet-sketch/ "
        "(images/<wnid>/ or sketch/<wnid>/)"),
    "imagenet_a": Source(
        "ImageNet-A",
        "imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples, extracted in "
        "imagenet-adversarial/ (imagenet-a/<wnid>/)"),
    "imagenet_r": Source(
        "ImageNet-R",
        "imagenet-r.tar from https://github.com/hendrycks/imagenet-r, extracted in imagenet-rendition/ "
        "(imagenet-r/<wnid>/)"),
}
assert set(SOURCES) == set(ALL_DATASETS), sorted(set(SOURCES) ^ set(ALL_DATASETS))

_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Missing:
    """A file or folder the layout needs that is not there.

    Attributes:
      path: relative to the data root, POSIX; a folder ends with "/".
      what: what it is, singular ("train image", "split file", "val class folder", ...).
      part: which part of the download brings it: "images" or "split" (:class:`Source`).
    """

    path: str
    what: str
    part: str


@dataclasses.dataclass
class Report:
    """What :func:`check` found.

    Attributes:
      name: the dataset.
      root: the data root as given.
      counts: images per split as the project's reader sees them ({} when they could not be counted).
      classes: number of classes (None when not known).
      missing: what is missing, in the order found.
      problems: what is wrong other than a missing path, one sentence each.
    """

    name: str
    root: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    classes: int | None = None
    missing: list[Missing] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.problems

    @property
    def source(self) -> Source:
        return SOURCES[self.name]

    def hints(self) -> list[str]:
        """Where to get what is missing (DATASETS.md's instructions), one line per part of the download."""
        parts = {m.part for m in self.missing}
        return [text for part, text in (("images", self.source.images), ("split", self.source.split))
                if part in parts and text]

    def summary(self) -> dict[str, Any]:
        return {"dataset": self.name, "root": self.root, "complete": self.complete, "counts": self.counts,
                "classes": self.classes, "missing": len(self.missing), "problems": len(self.problems)}


def _join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_images(r: Report, splits: dict[str, list[Example]], image_rel: str) -> None:
    """Adds each image of `splits` that is not on disk; an example's key is its path under `image_rel`."""
    for split in _SPLITS:
        examples = splits.get(split, [])
        rel = {ex.image: _join(image_rel, ex.key) for ex in examples}
        r.missing.extend(Missing(rel[p], f"{split} image", "images") for p in missing_files(list(rel)))


def _check_empty_splits(r: Report, where: str) -> None:
    for split in ("train", "test"):
        if r.counts.get(split) == 0:
            r.problems.append(f"{where} lists no {split} images")


def _check_split_file_dataset(r: Report, root: epath.Path) -> None:
    ddir, idir, sfile = coop.SPLIT_FILE_DATASETS[r.name]
    image_rel, split_rel = _join(ddir, idir), _join(ddir, sfile)
    have_images = (root / image_rel).is_dir()
    if not have_images:
        r.missing.append(Missing(image_rel + "/", "image folder", "images"))
    if not (root / split_rel).is_file():
        r.missing.append(Missing(split_rel, "split file", "split"))
        return
    try:
        classnames, splits = coop.read_split_file(root / split_rel, root / image_rel, dataset=r.name)
    except ValueError as e:
        r.problems.append(f"{split_rel} cannot be used ({e}); download it again")
        return
    r.counts = {s: len(splits[s]) for s in _SPLITS}
    r.classes = len(classnames)
    _check_empty_splits(r, split_rel)
    if have_images:  # else the missing folder says it all
        _check_images(r, splits, image_rel)


def _check_fgvc(r: Report, root: epath.Path) -> None:
    ddir = coop.FGVC_DIR
    image_rel = _join(ddir, coop.FGVC_IMAGE_DIR)
    have_images = (root / image_rel).is_dir()
    if not have_images:
        r.missing.append(Missing(image_rel + "/", "image folder", "images"))
    texts = [(coop.FGVC_CLASSNAMES_FILE, "class-name file")] + [
        (coop.FGVC_SPLIT_FILES[s], "split file") for s in _SPLITS]
    absent = [Missing(_join(ddir, f), what, "split") for f, what in texts if not (root / ddir / f).is_file()]
    r.missing.extend(absent)
    if absent or not have_images:  # load_fgvc_aircraft needs them all to count
        return
    try:
        ds = coop.load_fgvc_aircraft(root)
    except ValueError as e:
        r.problems.append(f"{ddir}/ cannot be read ({e}); extract the archive's data/ folder again")
        return
    r.counts = {s: len(getattr(ds, s)) for s in _SPLITS}
    r.classes = len(ds.classnames)
    _check_empty_splits(r, f"{ddir}/images_variant_*.txt")
    _check_images(r, {s: getattr(ds, s) for s in _SPLITS}, image_rel)


_VAL_HINT = ("move each image into the folder of its class (the ILSVRC-2012 devkit's validation ground "
             "truth; e.g. valprep.sh of github.com/soumith/imagenetloader.torch does it)")


def _check_class_folders(r: Report, root: epath.Path, rel: str, expected: Sequence[str], known: Iterable[str],
                         what: str, folder_what: str = "class folder") -> tuple[set[str], bool]:
    """Checks that ``root/rel`` holds a folder per name in `expected` (each a name in `known`), not loose images.

    Returns the (non-hidden) folders present and whether the project's reader can list them all.
    """
    dirs, files = list_entries(root / rel)
    present = {d for d in dirs if not d.startswith(".")}
    loose = sorted(f for f in files if _is_image(f))
    tars = sorted(f for f in files if f.endswith(".tar"))
    if loose:
        r.problems.append(
            f"{rel}/ holds {len(loose)} images directly ({errors.listing(loose, limit=3)}), not in class folders: "
            f"the reader only reads {rel}/<class>/<image> and ignores them; "
            + (_VAL_HINT if rel.endswith("/val") else "move each into the folder of its class"))
    if tars and not present:
        r.problems.append(f"{rel}/ holds {len(tars)} .tar files ({errors.listing(tars, limit=3)}): extract each "
                          f"into a folder of its name (ILSVRC2012_img_train.tar holds one tar per class)")
    unknown = sorted(present - set(known))
    if unknown:
        r.problems.append(f"{rel}/ has {len(unknown)} folders that are no {what} class "
                          f"({errors.listing(unknown)}); the reader stops on them: remove them")
    if present or not (loose or tars):  # else the problem above says it: no need to list every class
        r.missing.extend(Missing(f"{rel}/{c}/", folder_what, "images") for c in expected if c not in present)
    return present, not unknown


def _check_empty_classes(r: Report, rel: str, present: set[str], expected: Sequence[str],
                         examples: Sequence[Example], key_prefix: str) -> None:
    """A problem for each expected class folder that is there but holds no image (keys: ``key_prefix<class>/<file>``)."""
    with_images = {posixpath.dirname(ex.key) for ex in examples}
    empty = [c for c in expected if c in present and key_prefix + c not in with_images]
    if empty:
        r.problems.append(f"{len(empty)} class folders in {rel}/ hold no images: {errors.listing(empty)}")


def _check_imagenet(r: Report, root: epath.Path) -> None:
    ddir = imagenet.IMAGENET_DIR
    images_rel = _join(ddir, imagenet.IMAGENET_IMAGE_DIR)
    names_rel = _join(ddir, imagenet.IMAGENET_CLASSNAMES_FILE)
    readable = True
    wnids = imagenet_wnids()  # the folders to expect until classnames.txt says otherwise
    if not (root / names_rel).is_file():
        r.missing.append(Missing(names_rel, "class-name file", "split"))
        readable = False
    else:
        try:
            wnids = imagenet.read_wnid_classnames(root / names_rel)[0]
        except ValueError as e:
            r.problems.append(f"{names_rel} cannot be used ({e}); download it again")
            readable = False
    present: dict[str, set[str]] = {}
    for split in ("train", "val"):
        rel = _join(images_rel, split)
        if not (root / rel).is_dir():
            r.missing.append(Missing(rel + "/", f"{split} image folder", "images"))
            readable = False
            continue
        present[split], ok = _check_class_folders(r, root, rel, wnids, wnids, "ImageNet",
                                                    f"{split} class folder")
        readable = readable and ok
    if not readable:
        return
    ds = imagenet.load_imagenet(root)
    # The reader's val is empty: ImageNet's val folder is the test split (as in CoOp).
    r.counts = {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
    r.classes = len(ds.classnames)
    # An empty split shows as missing or empty class folders, or as loose images.
    for split, examples in (("train", ds.train), ("val", ds.test)):
        _check_empty_classes(r, _join(images_rel, split), present[split], wnids, examples, f"{split}/")


def _check_variant(r: Report, root: epath.Path) -> None:
    candidates = imagenet.VARIANT_DIRS[r.name]
    rel = next((c for c in candidates if (root / c).is_dir()), None)
    if rel is None:
        r.missing.extend(Missing(c + "/", "image folder (any one of these)", "images") for c in candidates)
        return
    all_wnids = imagenet_wnids()
    if r.name == "imagenet_v2":  # folders are ImageNet's label indices
        known = [str(i) for i in range(len(all_wnids))]
        expected = known
    else:
        known = all_wnids
        expected = [all_wnids[i] for i in imagenet_subset(r.name)]
    present, ok = _check_class_folders(r, root, rel, expected, known, r.name)
    if not ok:
        return
    try:
        ds = imagenet.load_imagenet_variant(r.name, root)
    except ValueError as e:  # e.g. a classnames.txt next to the images that cannot be used
        r.problems.append(f"{rel}/ cannot be read: {e}")
        return
    r.counts = {"train": 0, "val": 0, "test": len(ds.test)}
    r.classes = len({ex.label for ex in ds.test})
    _check_empty_classes(r, rel, present, expected, ds.test, "")


def check(name: str, root: str | os.PathLike) -> Report:
    """Checks dataset `name` under the CoOp data root `root` (see the module docstring).

    Raises:
      ConfigError: unknown `name` (the message lists the known ones).
      DataError: `root` is not a folder.
    """
    if name not in ALL_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(ALL_DATASETS)}",
                          hint="NAME is a dataset name as the configs use it (dataset=NAME)")
    root_path = storage.path(root)
    if not root_path.is_dir():
        raise DataError(f"data root {os.fspath(root)} does not exist or is not a folder",
                        hint="pass --root the folder that holds the CoOp dataset folders ($DATA in CoOp's "
                             f"DATASETS.md, {DATASETS_MD})")
    r = Report(name=name, root=os.fspath(root))
    if name == "imagenet":
        _check_imagenet(r, root_path)
    elif name in VARIANTS:
        _check_variant(r, root_path)
    elif name == "fgvc_aircraft":
        _check_fgvc(r, root_path)
    else:
        _check_split_file_dataset(r, root_path)
    return r


def format_report(r: Report, limit: int = 20) -> str:
    """The human-readable report: status, counts, each kind of missing path (first `limit`, then a count),
    problems, and where to get what is missing."""
    status = "complete" if r.complete else f"INCOMPLETE ({len(r.missing)} missing, {len(r.problems)} problems)"
    lines = [f"{r.name} under {r.root}: {status}"]
    if r.counts:
        counts = ", ".join(f"{s} {r.counts.get(s, 0)}" for s in _SPLITS)
        note = " (ImageNet's val folder is the test split)" if r.name == "imagenet" else ""
        lines.append(f"  images: {counts}{note}; classes: {r.classes}")
    else:
        lines.append("  images: not counted (fix what is below first)")
    groups: dict[str, list[str]] = {}
    for m in r.missing:
        groups.setdefault(m.what, []).append(m.path)
    for what, paths in groups.items():
        plural = what + "s" if len(paths) > 1 and "(" not in what else what
        lines.append(f"  missing {plural} ({len(paths)}, relative to {r.root}):")
        lines.extend(f"    {p}" for p in paths[:limit])
        if len(paths) > limit:
            lines.append(f"    ... and {len(paths) - limit} more")
    lines.extend(f"  problem: {p}" for p in r.problems)
    if not r.complete:
        lines.extend(f"  get: {h}" for h in r.hints())
        lines.append(f"  see: CoOp's DATASETS.md, section \"{r.source.section}\": {r.source.url}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aape_jax.data.check",
        description="Check that a CoOp-layout dataset is complete: exit 0 when it is, 1 when something is "
                    "missing or wrong, 2 on unusable input. The last stdout line is a JSON object.")
    parser.add_argument("name", metavar="NAME", help=f"dataset, as the configs name it: {', '.join(ALL_DATASETS)}")
    parser.add_argument("--root", required=True, help="the CoOp data root ($DATA of CoOp's DATASETS.md); may be gs://")
    parser.add_argument("--limit", type=int, default=20, help="missing paths listed per kind, then a count (default 20)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = check(args.name, args.root)
    except Exception as e:  # a user error is printed in two lines; anything else is a bug
        code = errors.report(e, verbose=args.verbose, prog="error")
        if code is None:
            raise
        return code
    print(format_report(report, limit=args.limit))
    print(json.dumps(report.summary()), flush=True)
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
