"""Every class of the ten datasets with a CuPL file gets its real CuPL descriptions.

Reads ../shared/data/cupl/<dataset>.json (skipped with the reason where absent) and the
package's class names (`aape_jax.data.classnames`) and alias table (`prompts.aliases`).
"""

import collections
import json
import pathlib
import subprocess
import sys

import pytest

from aape_jax.data import classnames
from aape_jax.prompts import (ALIASED_DATASETS, MissingPromptsError, aliases_for, match_classes, normalize_name,
                              read_class_descriptions)

REPO = pathlib.Path(__file__).resolve().parents[1]

# Dataset -> CuPL file name (EuroSAT has none upstream).
CUPL = {"imagenet": "imagenet.json", "caltech101": "caltech101.json", "oxford_pets": "oxford_pets.json",
        "stanford_cars": "stanford_cars.json", "flowers102": "flowers102.json", "food101": "food101.json",
        "fgvc_aircraft": "fgvc_aircraft.json", "sun397": "sun397.json", "dtd": "dtd.json", "ucf101": "ucf101.json"}

# CuPL keys no CoOp class uses: Caltech's background class and `Faces_easy`, both of
# which CoOp leaves out.
UNUSED_KEYS = {"caltech101": {"background", "centered face"}}


@pytest.mark.parametrize("dataset", sorted(CUPL))
def test_every_class_has_its_cupl_descriptions(shared_data, dataset):
    names = classnames.load(dataset)
    descriptions = read_class_descriptions(shared_data / "cupl" / CUPL[dataset])
    result = match_classes(names, descriptions, aliases_for(dataset), source=CUPL[dataset])  # raises if any miss
    assert result.fallback_classes == []
    assert len(result.prompts) == len(names) and all(result.prompts)
    # Every CuPL key is used (the mapping is onto), but for keys of classes CoOp drops.
    assert set(descriptions) - set(result.matched_keys) == UNUSED_KEYS.get(dataset, set())
    # Two labels share a key only where the class name itself repeats (ImageNet).
    shared = {k for k, n in collections.Counter(result.matched_keys).items() if n > 1}
    for key in shared:
        assert len({c for c, k in zip(names, result.matched_keys) if k == key}) == 1, key
    if dataset == "imagenet":
        assert len(descriptions) == 998 and {names[i] for i in (657, 744, 836, 837)} == {"missile", "sunglasses"}
        assert len(shared) == 2
    else:
        assert not shared


@pytest.mark.parametrize("dataset", ALIASED_DATASETS)
def test_aliases_hold_only_needed_entries(shared_data, dataset):
    names = classnames.load(dataset)
    descriptions = read_class_descriptions(shared_data / "cupl" / CUPL[dataset])
    table = aliases_for(dataset)
    assert set(table) <= set(names) and set(table.values()) <= set(descriptions)
    assert len(set(table.values())) == len(table)  # no two classes aliased to one key
    # Each aliased class is one that exact and normalised matching cannot place.
    with pytest.raises(MissingPromptsError) as e:
        match_classes(list(table), descriptions)
    assert e.value.missing == list(table)
    normal = {normalize_name(k) for k in descriptions}
    assert not [c for c in table if normalize_name(c) in normal]


def test_aliases_for():
    assert aliases_for("eurosat") == {} and aliases_for("imagenet") == {} and aliases_for("my_own") == {}
    table = aliases_for("caltech101")
    assert table["face"] == "off-center face" and table["car_side"] == "side of a car"
    table["face"] = "changed"
    assert aliases_for("caltech101")["face"] == "off-center face"  # a fresh dict each call
    assert aliases_for("caltech101", available={"side of a car": []}) == {"car_side": "side of a car"}
    assert len(aliases_for("stanford_cars")) == 196 and len(aliases_for("sun397")) == 126
    cars, sun = aliases_for("stanford_cars"), aliases_for("sun397")
    assert cars["2012 Acura RL Sedan"] == "Acura RL Sedan 2012"
    assert cars["2012 Ram C/V Cargo Van Minivan"] == "Ram CV Cargo Van Minivan 2012"
    assert sun["outdoor apartment_building"] == "apartment building (outdoor)" and "abbey" not in sun


def _check(*argv):
    proc = subprocess.run([sys.executable, "-m", "aape_jax.prompts", "check", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr


def test_check_cli_on_the_real_file(shared_data):
    code, out, err = _check("--dataset", "sun397", "--prompts", str(shared_data / "cupl" / "sun397.json"))
    assert code == 0, err
    assert json.loads(out[-1]) == {"dataset": "sun397", "classes": 397, "covered": 397, "missing": []}


def test_check_cli_lists_missing_classes(shared_data, tmp_path):
    descriptions = read_class_descriptions(shared_data / "cupl" / "caltech101.json")
    for key in ("off-center face", "leopard", "yin and yang symbol"):
        del descriptions[key]
    partial = tmp_path / "caltech101_partial.json"
    partial.write_text(json.dumps(descriptions), encoding="utf-8")
    code, out, _ = _check("--dataset", "caltech101", "--prompts", str(partial))
    assert code == 1
    missing = ["face", "leopard", "yin_yang"]  # label order
    assert json.loads(out[-1]) == {"dataset": "caltech101", "classes": 100, "covered": 97, "missing": missing}
    assert all(f"  {c}" in out for c in missing)
