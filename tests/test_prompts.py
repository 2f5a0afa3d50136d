"""Prompt sources (templates, CuPL descriptions, captions) and class-name matching."""

import json
import logging
import pathlib

import pytest

from aape_jax import prompts
from aape_jax.prompts import MissingPromptsError, match_classes, normalize_name

CUPL_FILES = ["caltech101", "cifar10", "cifar100", "cub200", "dtd", "fgvc_aircraft", "flowers102",
              "food101", "imagenet", "oxford_pets", "resisc45", "stanford_cars", "sun397", "ucf101"]

# CoOp's Caltech101 class names (folder names with its four renames) whose CuPL keys differ:
# CuPL follows CLIP's own Caltech101 names ("centered face", "side of a car", ...).
CALTECH_COOP_ALIASES = {
    "car_side": "side of a car", "cougar_body": "body of a cougar cat",
    "cougar_face": "face of a cougar cat", "crocodile_head": "head of a crocodile",
    "face": "off-center face", "flamingo_head": "head of a flamingo",
    "snoopy": "snoopy (cartoon beagle)", "yin_yang": "yin and yang symbol",
}


def write(tmp_path: pathlib.Path, name: str, content) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# --- templates -----------------------------------------------------------------------

def test_imagenet_templates():
    t = prompts.IMAGENET_TEMPLATES
    assert len(t) == 80 and len(set(t)) == 80
    assert all(s.count("{}") == 1 for s in t)
    assert t[0] == "a bad photo of a {}." and t[1] == "a photo of many {}." and t[-1] == "a tattoo of the {}."
    assert {"itap of a {}.", "a origami {}.", "a photo of the large {}.", prompts.SINGLE_TEMPLATE} <= set(t)


def test_fill():
    assert prompts.fill(["a photo of a {}.", "{} art"], "cat {x}") == ["a photo of a cat {x}.", "cat {x} art"]
    for bad in (["no slot"], ["{} and {}"], []):
        with pytest.raises(ValueError):
            prompts.fill(bad, "cat")


# --- CuPL descriptions ---------------------------------------------------------------

@pytest.mark.parametrize("name", CUPL_FILES)
def test_real_cupl_files_load(shared_data, name):
    d = prompts.read_class_descriptions(shared_data / "cupl" / f"{name}.json")
    assert d and all(len(s) >= 1 and all(x and x == x.strip() for x in s) for s in d.values())
    if name == "imagenet":
        assert len(d) == 998  # 1000 classes, two names shared (CuPL keeps one key each)


def test_cupl_cleaning(tmp_path):
    path = write(tmp_path, "d.json", {"cat": [" A cat. ", "", "A cat.", "Fur.", "  "], "dog": ["Woof."]})
    assert prompts.read_class_descriptions(path) == {"cat": ["A cat.", "Fur."], "dog": ["Woof."]}


@pytest.mark.parametrize("content, needle", [
    ("{not json", "invalid JSON"),
    ('["a", "b"]', "JSON object"),
    ("{}", "no classes"),
    ('{"cat": "A cat."}', "'cat'"),
    ('{"cat": ["A cat.", 3]}', "'cat'"),
    ('{"cat": ["a"], "cat": ["b"]}', "'cat' appears more than once"),
])
def test_cupl_errors_name_file_and_key(tmp_path, content, needle):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(ValueError) as e:
        prompts.read_class_descriptions(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_cupl_keys_without_sentences_are_left_out(tmp_path):
    # Issue 11 item 6: an empty list is a missing class (the template fallback covers it), not a bad file.
    path = write(tmp_path, "d.json", {"cat": ["A cat."], "gerenuk": [], "eel": ["  "]})
    assert prompts.read_class_descriptions(path) == {"cat": ["A cat."]}


# --- matching ------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    ("Yorkshire_Terrier", "yorkshire terrier", "yorkshire terrier"),
    ("hard-leaved pocket orchid", "Hard_Leaved Pocket Orchid", "hard leaved pocket orchid"),
    ("colt's foot", "colts foot", "colts foot"), ("St. Bernard", "st bernard", "st bernard"),
    ("baluster / handrail", "baluster_handrail", "baluster handrail"),
    ("kite (bird of prey)", "Kite bird of prey", "kite bird of prey"),
    ("  many   spaces\t", "many spaces", "many spaces"), ("ＣＡＴ", "cat", "cat"),  # NFKC: fullwidth letters
])
def test_normalize_name(a, b, expected):
    assert normalize_name(a) == normalize_name(b) == expected


def test_match_rules():
    file = {"Yorkshire Terrier": ["y1"], "st. bernard": ["s1"], "centered face": ["f1"], "cat": ["c1"]}
    r = match_classes(["yorkshire_terrier", "St_Bernard", "face", "cat", "cat"], file,
                      aliases={"face": "centered face"})
    assert r.prompts == [["y1"], ["s1"], ["f1"], ["c1"], ["c1"]]
    assert r.matched_keys == ["Yorkshire Terrier", "st. bernard", "centered face", "cat", "cat"]
    assert r.fallback_classes == []
    assert r.prompts[3] is not r.prompts[4] and r.prompts[3] is not file["cat"]  # fresh lists


def test_alias_wins_and_exact_beats_normalised():
    file = {"Crane": ["machine"], "crane": ["bird"]}
    assert match_classes(["crane"], file).prompts == [["bird"]]
    assert match_classes(["crane"], file, aliases={"crane": "Crane"}).prompts == [["machine"]]


def test_alias_to_missing_key_names_both():
    with pytest.raises(ValueError, match=r"f\.json.*'face' -> 'centred face'"):
        match_classes(["face"], {"centered face": ["f"]}, aliases={"face": "centred face"}, source="f.json")


def test_keys_normalising_alike_are_merged_in_file_order():
    file = {"Maillot": ["m1", "shared"], "other": ["o"], "maillot.": ["shared", "m2"]}
    r = match_classes(["maillot", "MAILLOT"], file)
    assert r.prompts == [["m1", "shared", "m2"]] * 2
    assert r.matched_keys == ["Maillot", "Maillot"]


def test_missing_classes_all_listed():
    with pytest.raises(MissingPromptsError) as e:
        match_classes(["cat", "dog", "eel", "dog"], {"cat": ["c"]}, source="pets.json")
    assert e.value.missing == ["dog", "eel"]
    assert "'dog'" in str(e.value) and "'eel'" in str(e.value) and "pets.json" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_fallback_to_templates_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        r = match_classes(["cat", "dog_fish"], {"cat": ["c"]}, fallback_templates=["a {}."], source="x.json")
    assert r.prompts == [["c"], ["a dog_fish."]]
    assert r.matched_keys == ["cat", None] and r.fallback_classes == ["dog_fish"]
    assert "'dog_fish'" in caplog.text and "x.json" in caplog.text
    with pytest.raises(ValueError):  # malformed fallback templates fail even with nothing to fall back
        match_classes(["cat"], {"cat": ["c"]}, fallback_templates=["no slot"])


def test_real_caltech101_keys(shared_data):
    path = shared_data / "cupl" / "caltech101.json"
    d = prompts.read_class_descriptions(path)
    r = match_classes(["leopard", "Motorbike", "AIRPLANE", "water_lilly", "Grand_Piano", "off_center_face"], d)
    assert r.matched_keys == ["leopard", "motorbike", "airplane", "water lilly", "grand piano", "off-center face"]
    # Raw Caltech folder names are plural; normalisation does not stem, so they need CoOp's renames.
    with pytest.raises(MissingPromptsError) as e:
        match_classes(["Faces", "Leopards", *CALTECH_COOP_ALIASES], d, source=str(path))
    assert e.value.missing == ["Faces", "Leopards", *CALTECH_COOP_ALIASES]
    r = match_classes(list(CALTECH_COOP_ALIASES), d, aliases=CALTECH_COOP_ALIASES)
    assert r.matched_keys == list(CALTECH_COOP_ALIASES.values())


# --- captions ------------------------------------------------------------------------

COCO = {
    "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
    "annotations": [{"image_id": 2, "caption": "A dog. "}, {"image_id": 1, "caption": "A cat."},
                    {"image_id": 1, "caption": "A cat."}, {"image_id": 1, "caption": "Fur."}],
}


def test_coco_captions(tmp_path):
    assert prompts.read_coco_captions(write(tmp_path, "c.json", COCO)) == {"a.jpg": ["A cat.", "Fur."],
                                                                          "b.jpg": ["A dog."]}


def test_coco_errors(tmp_path):
    no_caption = dict(COCO, images=COCO["images"] + [{"id": i, "file_name": f"x{i}.jpg"} for i in range(3, 28)])
    with pytest.raises(ValueError, match=r"c\.json: 25 image\(s\) without any caption: 'x3\.jpg'.*and 5 more"):
        prompts.read_coco_captions(write(tmp_path, "c.json", no_caption))
    unknown = dict(COCO, annotations=COCO["annotations"] + [{"image_id": 99, "caption": "?"}])
    with pytest.raises(ValueError, match=r"d\.json: captions refer to 1 unknown image id\(s\): 99"):
        prompts.read_coco_captions(write(tmp_path, "d.json", unknown))
    with pytest.raises(ValueError, match="'images' and 'annotations'"):
        prompts.read_coco_captions(write(tmp_path, "e.json", {"images": []}))


def test_jsonl_captions(tmp_path):
    lines = ['{"image": "a.jpg", "captions": ["A cat.", " "]}', "",
             '{"image": "b.jpg", "captions": ["A dog."]}', '{"image": "a.jpg", "captions": ["Fur.", "A cat."]}']
    path = write(tmp_path, "c.jsonl", "\n".join(lines) + "\n")
    assert prompts.read_jsonl_captions(path) == {"a.jpg": ["A cat.", "Fur."], "b.jpg": ["A dog."]}


@pytest.mark.parametrize("bad_line, needle", [
    ("{oops", "invalid JSON"), ('{"image": "b.jpg"}', "expected"), ('{"image": 3, "captions": []}', "expected"),
    ('{"image": "b.jpg", "captions": ["ok", 1]}', "expected"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad_line, needle):
    path = write(tmp_path, "c.jsonl", '{"image": "a.jpg", "captions": ["A cat."]}\n\n' + bad_line + "\n")
    with pytest.raises(ValueError, match=rf"c\.jsonl:3: {needle}"):
        prompts.read_jsonl_captions(path)


def test_jsonl_image_without_caption(tmp_path):
    path = write(tmp_path, "c.jsonl", '{"image": "a.jpg", "captions": ["A cat."]}\n{"image": "b.jpg", "captions": [""]}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl: 1 image\(s\) without any caption: 'b\.jpg'"):
        prompts.read_jsonl_captions(path)
