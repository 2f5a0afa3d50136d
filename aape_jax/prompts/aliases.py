"""Per-dataset aliases {CoOp class name: CuPL key} where `normalize_name` alone does not match.

The published CuPL files (`cupl/<dataset>.json`) spell classes as CLIP's zero-shot
notebooks do; CoOp's class names (`aape_jax.data.classnames.load`) are mostly the same
words, which `match_classes` pairs by normalisation. The tables and rules below cover
only the classes it cannot pair, each checked against the real files by
tests/test_cupl_coverage.py (every class of the ten datasets gets its CuPL sentences,
none falls back to templates):

  imagenet, oxford_pets, food101, fgvc_aircraft, dtd: none needed. ImageNet's list
    repeats "missile" (657, 744) and "sunglasses" (836, 837), as CLIP's and CuPL's own
    lists do; CuPL keeps one key for each (998 keys), and both classes of a pair match it.
  caltech101: CLIP's names for CoOp's renamed folders (8).
  flowers102: two CoOp spellings (2).
  stanford_cars: CoOp moves the model year to the front, CuPL keeps it last (a rule; 196).
  sun397: CoOp writes "qualifier category_name", CuPL "category name (qualifier)" (a rule; 126).
  ucf101: one camel-case split that differs (1).
EuroSAT has no CuPL file; its prompts come from `python -m aape_jax.prompts generate`.

A table's keys are CuPL's; for a prompt file keyed differently (e.g. a generated one,
keyed by the class names themselves) pass `available=` to `aliases_for`, which keeps only
the aliases whose key the file holds.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from aape_jax.data import classnames

_CALTECH101 = {
    # CoOp's "face" is Caltech's `Faces` folder (CoOp renames Faces -> face and drops
    # Faces_easy). CLIP's Caltech101 names, which CuPL uses, map `Faces` to
    # "off-center face" and `Faces_easy` to "centered face" (alphabetical folder order:
    # BACKGROUND_Google, Faces, Faces_easy -> "background", "off-center face",
    # "centered face"). So "off-center face", although its CuPL sentences are the
    # weaker ones ("A face that is not symmetrical."): `Faces` images are whole
    # photographs with the face anywhere, `Faces_easy` are crops centred on it.
    "face": "off-center face",
    "car_side": "side of a car",
    "cougar_body": "body of a cougar cat",
    "cougar_face": "face of a cougar cat",
    "crocodile_head": "head of a crocodile",
    "flamingo_head": "head of a flamingo",
    "snoopy": "snoopy (cartoon beagle)",
    "yin_yang": "yin and yang symbol",
}

_FLOWERS102 = {
    # CoOp's cat_to_name.json has the question mark; CLIP/CuPL write "pink and yellow".
    "pink-yellow dahlia?": "pink and yellow dahlia",
    # Same label (index 92 in both lists): ball moss (Tillandsia recurvata) is an air
    # plant, and CLIP/CuPL name the class "air plant".
    "ball moss": "air plant",
}

_UCF101 = {
    # CoOp splits the folder name "HandstandPushups" at capitals; CLIP/CuPL write
    # "Hand Stand Pushups".
    "Handstand_Pushups": "Hand Stand Pushups",
}

# CuPL writes this one model without the slash; every other car follows `_year_last`.
_STANFORD_CARS = {"2012 Ram C/V Cargo Van Minivan": "Ram CV Cargo Van Minivan 2012"}


def _year_last(name: str) -> str | None:
    """Stanford Cars: CoOp's "2012 Acura RL Sedan" is CuPL's "Acura RL Sedan 2012"."""
    match = re.fullmatch(r"(\d{4}) (.+)", name)
    return f"{match[2]} {match[1]}" if match else None


def _qualifier_last(name: str) -> str | None:
    """SUN397: CoOp's "outdoor apartment_building" is CuPL's "apartment building (outdoor)"."""
    if " " not in name:
        return None
    qualifier, category = name.split(" ", 1)
    return f"{category.replace('_', ' ')} ({qualifier.replace('_', ' ')})"


_TABLES = {"caltech101": _CALTECH101, "flowers102": _FLOWERS102, "stanford_cars": _STANFORD_CARS, "ucf101": _UCF101}
# Applied to the dataset's class names (`aape_jax.data.classnames`) before its table.
_RULES = {"stanford_cars": _year_last, "sun397": _qualifier_last}
ALIASED_DATASETS = tuple(sorted({*_TABLES, *_RULES}))


def aliases_for(dataset: str, available: Collection[str] | None = None) -> dict[str, str]:
    """{class name: CuPL key} for `dataset` (a fresh dict; {} for a dataset without aliases).

    Args:
      dataset: a name of `aape_jax.data.classnames.DATASETS` ("imagenet", "sun397", ...);
        names without a table (e.g. "eurosat", or a user's own dataset) get {}.
      available: the keys of the prompt file the aliases are for (a dict works); if
        given, aliases to keys it lacks are dropped, so a file keyed by the class names
        themselves (e.g. one written by `generate`) is matched by name instead of
        failing on a CuPL key it does not have.
    """
    table = {}
    if dataset in _RULES:
        table = {c: k for c in classnames.load(dataset) if (k := _RULES[dataset](c)) is not None}
    table.update(_TABLES.get(dataset, {}))
    if available is not None:
        table = {c: k for c, k in table.items() if k in available}
    return table
