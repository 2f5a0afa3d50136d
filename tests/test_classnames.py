"""The shipped class-name lists: sizes, duplicates, ImageNet wnids and subsets."""

from __future__ import annotations

import json
import pathlib

import pytest

from aape_jax.data import classnames

SIZES = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "flowers102": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
}

CUPL = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cupl"


def test_datasets_and_variants():
    assert classnames.DATASETS == tuple(SIZES)
    assert classnames.VARIANTS == ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_sizes_and_no_blank_names(name, size):
    names = classnames.load(name)
    assert len(names) == size
    assert all(n == n.strip() and n for n in names)


@pytest.mark.parametrize("name", [n for n in SIZES if n != "imagenet"])
def test_no_duplicates(name):
    names = classnames.load(name)
    assert len(set(names)) == len(names)


def test_imagenet_duplicates_are_the_known_two():
    names = classnames.load("imagenet")
    dups = sorted({n for n in names if names.count(n) > 1})
    assert dups == ["missile", "sunglasses"]
    assert names[657] == names[744] == "missile"
    assert names[836] == names[837] == "sunglasses"
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[-1] == "toilet paper"
    assert names[134] == "crane bird" and names[517] == "construction crane"


def test_coop_conventions():
    cal = classnames.load("caltech101")
    assert cal[:5] == ["face", "leopard", "motorbike", "accordion", "airplane"]
    assert not any("background" in n.lower() or n == "Faces_easy" for n in cal)
    assert classnames.load("oxford_pets")[:2] == ["abyssinian", "american_bulldog"]
    assert classnames.load("stanford_cars")[0] == "2000 AM General Hummer SUV"
    assert classnames.load("flowers102")[0] == "pink primrose"
    assert classnames.load("food101")[0] == "apple_pie"
    assert classnames.load("fgvc_aircraft")[0] == "707-320"
    sun = classnames.load("sun397")
    assert sun[0] == "abbey" and "indoor apse" in sun and "shop bakery" in sun
    assert classnames.load("eurosat") == [
        "Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
        "Industrial Buildings", "Pasture Land", "Permanent Crop Land",
        "Residential Buildings", "River", "Sea or Lake",
    ]
    assert classnames.load("ucf101")[0] == "Apply_Eye_Makeup"


def test_load_returns_a_fresh_list():
    a = classnames.load("dtd")
    a.append("x")
    assert len(classnames.load("dtd")) == 47


def test_variants_use_imagenet_names():
    for v in classnames.VARIANTS:
        assert classnames.load(v) == classnames.load("imagenet")


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="known datasets: imagenet, caltech101"):
        classnames.load("cifar10")


def test_imagenet_wnids_and_subsets():
    w = classnames.imagenet_wnids()
    assert len(w) == 1000 and w == sorted(w) and len(set(w)) == 1000
    assert w[0] == "n01440764" and w[-1] == "n15075141"
    for v in ("imagenet_a", "imagenet_r"):
        sub = classnames.imagenet_subset(v)
        assert len(sub) == 200 and sub == sorted(set(sub)) and 0 <= sub[0] and sub[-1] < 1000
    assert classnames.imagenet_subset("imagenet_a")[:3] == [6, 11, 13]
    assert classnames.imagenet_subset("imagenet_r")[:3] == [1, 2, 4]
    assert classnames.imagenet_subset("imagenet_v2") == list(range(1000))
    with pytest.raises(KeyError, match="imagenet_a"):
        classnames.imagenet_subset("dtd")


@pytest.mark.skipif(not CUPL.is_dir(), reason="../shared/data/cupl not present")
def test_imagenet_matches_cupl_keys_with_repeats_collapsed():
    keys = list(json.loads((CUPL / "imagenet.json").read_text()))
    names = classnames.load("imagenet")
    assert list(dict.fromkeys(names)) == keys


@pytest.mark.skipif(not CUPL.is_dir(), reason="../shared/data/cupl not present")
@pytest.mark.parametrize("name", ["oxford_pets", "food101", "fgvc_aircraft", "dtd"])
def test_same_classes_as_cupl_up_to_case_and_underscores(name):
    keys = json.loads((CUPL / f"{name}.json").read_text())
    norm = lambda s: s.lower().replace("_", " ")  # noqa: E731
    assert {norm(k) for k in keys} == {norm(n) for n in classnames.load(name)}
