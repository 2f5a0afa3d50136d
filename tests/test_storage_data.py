"""Dataset roots, split files, images, prompt and caption files read from a bucket (``gs://``, an emulator).

Each test builds a tree on local disk as the local tests do, uploads it, and checks that loading it from
the bucket gives what loading it locally gives: the same class names, keys, labels, pixels and prompts,
and for missing files the same error class and message, naming the gs:// path.
"""

import json
import pathlib

import numpy as np
import PIL.Image
import pytest

from aape_jax import errors, storage
from aape_jax.clip.preprocess import ImageTransform, load_image
from aape_jax.data import captions, classnames, protocol
from aape_jax.data.datasets import load_dataset
from aape_jax.data.folder import list_images, load_folder
from aape_jax.data.imagenet import imagenet_subset
from aape_jax.data.types import Example
from aape_jax.prompts import cli, read_class_descriptions, read_coco_captions, read_jsonl_captions
from aape_jax.prompts import generate as gen
from test_captions import _coco_tree
from test_datasets import _coop_tree, _png


@pytest.fixture(autouse=True)
def _no_local_gs_folder(tmp_path, monkeypatch):
    """Runs each test in `tmp_path`: an os.makedirs("gs://...") would leave a folder "gs:" there."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "gs:").exists(), "a gs:// path was treated as a local one"


def upload(local: pathlib.Path, remote: str) -> None:
    """Copies every file under `local` to the same relative path under `remote` (a gs:// folder)."""
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.path(f"{remote}/{f.relative_to(local).as_posix()}").write_bytes(f.read_bytes())


def _noise(path: pathlib.Path, seed: int) -> None:
    """A PNG with random pixels, so that decoded arrays tell images apart."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(path)


def _assert_same_dataset(local, remote, local_root, remote_root) -> None:
    """Same names, keys and labels; images are the same files under the other root, with the same pixels."""
    assert remote.name == local.name and remote.classnames == local.classnames
    for split in ("train", "val", "test"):
        a, b = getattr(local, split), getattr(remote, split)
        assert [(e.key, e.label) for e in b] == [(e.key, e.label) for e in a]
        assert [e.image for e in b] == [e.image.replace(str(local_root), remote_root, 1) for e in a]
    for a, b in list(zip(local.train, remote.train))[:3]:
        np.testing.assert_array_equal(np.asarray(load_image(b.image)), np.asarray(load_image(a.image)))


def _assert_same_error(call, local: str, remote: str):
    """`call(remote)` raises what `call(local)` raises, with the message naming `remote` where it named `local`."""
    with pytest.raises(Exception) as at_local:
        call(local)
    with pytest.raises(Exception) as at_remote:
        call(remote)
    assert type(at_remote.value) is type(at_local.value)
    assert local in str(at_local.value) and remote in str(at_remote.value)
    assert str(at_remote.value) == str(at_local.value).replace(local, remote)
    return at_remote.value


# --------------------------------------------------------------------------- #
# Dataset sources
# --------------------------------------------------------------------------- #
def test_coop_split_file_dataset(tmp_path, gcs_dir):
    split = _coop_tree(tmp_path / "data", "caltech101", ["b_class", "a_class", "c class"])
    image_dir = tmp_path / "data" / "caltech-101" / "101_ObjectCategories"
    for i, (rel, _, _) in enumerate(split["train"][:3]):
        _noise(image_dir / rel, i)
    upload(tmp_path / "data", gcs_dir)
    local = load_dataset("caltech101", tmp_path / "data")
    remote = load_dataset("caltech101", gcs_dir)
    _assert_same_dataset(local, remote, tmp_path / "data", gcs_dir)
    assert remote.train[0].image == f"{gcs_dir}/caltech-101/101_ObjectCategories/{split['train'][0][0]}"


def test_fgvc_aircraft(tmp_path, gcs_dir):
    d = tmp_path / "data" / "fgvc_aircraft"
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nBoeing 717\n")
    for s, lines in {"train": ["0001 707-320", "0002 Boeing 717"], "val": ["0003 707-320"], "test": ["0004 Boeing 717"]}.items():
        (d / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    for i in range(1, 5):
        _noise(d / "images" / f"000{i}.jpg", i)
    upload(tmp_path / "data", gcs_dir)
    _assert_same_dataset(load_dataset("fgvc_aircraft", tmp_path / "data"), load_dataset("fgvc_aircraft", gcs_dir),
                         tmp_path / "data", gcs_dir)


def test_imagenet_and_variant(tmp_path, gcs_dir):
    d = tmp_path / "data" / "imagenet"
    d.mkdir(parents=True)
    (d / "classnames.txt").write_text("n02 goldfish\nn01 tench\n")
    for i, wnid in enumerate(("n01", "n02")):
        _noise(d / "images" / "train" / wnid / "a.JPEG", i)
        _png(d / "images" / "val" / wnid / "v.JPEG")
    wnids, sub = classnames.imagenet_wnids(), imagenet_subset("imagenet_a")
    _png(tmp_path / "data" / "imagenet-a" / wnids[sub[0]] / "x.jpg")
    (tmp_path / "data" / "imagenet-a" / "README.txt").write_text("not a class")
    upload(tmp_path / "data", gcs_dir)
    for name in ("imagenet", "imagenet_a"):
        _assert_same_dataset(load_dataset(name, tmp_path / "data"), load_dataset(name, gcs_dir),
                             tmp_path / "data", gcs_dir)
    assert [e.key for e in load_dataset("imagenet", gcs_dir).train] == ["train/n01/a.JPEG", "train/n02/a.JPEG"]


@pytest.mark.parametrize("layout", ["flat", "presplit"])
def test_image_folder(tmp_path, gcs_dir, layout):
    root = tmp_path / "ds"
    for c in ("zebra", "ant"):
        for i in range(4):
            _noise((root / ("train" if layout == "presplit" else "") / c / f"{i}.png"), i)
            if layout == "presplit" and i < 2:
                _png(root / "test" / c / f"{i}.jpg")
    (root / ("train" if layout == "presplit" else "") / "ant" / "notes.txt").write_text("not an image")
    _png(root / ".hidden" / "x.png")
    upload(root, f"{gcs_dir}/ds")
    local, remote = load_folder(root, test_fraction=0.5), load_folder(f"{gcs_dir}/ds", test_fraction=0.5)
    _assert_same_dataset(local, remote, root, f"{gcs_dir}/ds")
    assert remote.classnames == ["ant", "zebra"] and len(remote.train) == 8 - 4 * (layout == "flat")
    cls_dir = f"{gcs_dir}/ds/{'train/' if layout == 'presplit' else ''}ant"
    assert [str(p) for p in list_images(cls_dir)] == [f"{cls_dir}/{i}.png" for i in range(4)]


def test_few_shot_cache_on_bucket(gcs_dir):
    pool = [Example(image=f"{i}.png", label=i % 3, key=f"k{i}") for i in range(12)]
    cache = f"{gcs_dir}/split_fewshot/shot_2-seed_1.json"
    first = protocol.few_shot_cached(pool, 2, 1, cache)
    assert first == protocol.few_shot(pool, 2, 1)
    assert json.loads(storage.path(cache).read_text()) == {"train": [[e.key, e.label] for e in first]}
    assert protocol.few_shot_cached(list(reversed(pool)), 2, 1, cache) == first  # the file wins


# --------------------------------------------------------------------------- #
# Captions, prompt files, preprocessor config
# --------------------------------------------------------------------------- #
def test_karpathy_captions(tmp_path, gcs_dir):
    local_path = _coco_tree(tmp_path / "coco")
    upload(tmp_path / "coco", gcs_dir)
    local = captions.read_karpathy(local_path, tmp_path / "coco")
    remote = captions.read_karpathy(f"{gcs_dir}/dataset_coco.json", gcs_dir)
    for split in ("train", "val", "test"):
        a, b = local.split(split), remote.split(split)
        assert [(im.key, im.captions) for im in b] == [(im.key, im.captions) for im in a]
        assert [im.image for im in b] == [f"{gcs_dir}/{im.key}" for im in a]
    storage.path(f"{gcs_dir}/val2014/c.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 image file.*{gcs_dir}/val2014/c\.jpg"):
        captions.read_karpathy(f"{gcs_dir}/dataset_coco.json", gcs_dir)


def test_tfds_records_exported_to_bucket(gcs_dir):
    records = [{"image/filename": b"a.jpg", "captions": {"text": [b"A cat."]},
                "image": np.full((4, 4, 3), 7, np.uint8)}]
    [image] = captions.captioned_images_from_records(records, "test", image_dir=gcs_dir)
    assert image.image == f"{gcs_dir}/a.png" and (np.asarray(load_image(image.image)) == 7).all()
    assert captions.captioned_images_from_records(records, "test", image_dir=gcs_dir) == [image]  # kept


def test_prompt_and_caption_files(tmp_path, gcs_dir, capsys):
    files = {
        "cupl.json": json.dumps({"cat": [" A cat. ", "A cat.", "Fur."], "dog": ["Woof."], "emu": []}),
        "coco.json": json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                 "annotations": [{"image_id": 1, "caption": "Café au lait."}]}),
        "c.jsonl": '{"image": "a.jpg", "captions": ["A cat.", " "]}\r\n\n{"image": "b.jpg", "captions": ["Ünï."]}\n',
        "questions.txt": "# CuPL\nWhat does {a} {} look like?\n\nDescribe {a} {}.\n",
        "classes.txt": "cat\n\ndog\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
    upload(tmp_path, gcs_dir)
    for read in (read_class_descriptions, read_coco_captions, read_jsonl_captions, gen.read_questions,
                 cli.read_classname_lines):
        name = {read_class_descriptions: "cupl.json", read_coco_captions: "coco.json", read_jsonl_captions: "c.jsonl",
                gen.read_questions: "questions.txt", cli.read_classname_lines: "classes.txt"}[read]
        assert read(f"{gcs_dir}/{name}") == read(tmp_path / name)
    assert cli.main(["check", "--classnames", f"{gcs_dir}/classes.txt", "--prompts", f"{gcs_dir}/cupl.json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "dataset": "classes", "classes": 2, "covered": 2, "missing": []}


def test_generated_descriptions_resume_on_bucket(gcs_dir):
    out = f"{gcs_dir}/prompts/generated.json"
    asked: list[str] = []

    def describe(c: str) -> list[str]:
        asked.append(c)
        return [f"A {c}."]

    assert gen.write_descriptions(out, ["cat", "dog"], describe, progress=False) == {"cat": ["A cat."], "dog": ["A dog."]}
    gen.write_descriptions(out, ["cat", "dog", "emu"], describe, progress=False)  # resumes: only emu is new
    assert asked == ["cat", "dog", "emu"]
    assert read_class_descriptions(out) == {"cat": ["A cat."], "dog": ["A dog."], "emu": ["A emu."]}


def test_preprocessor_config(tmp_path, gcs_dir):
    config = {"crop_size": 224, "size": {"shortest_edge": 256}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(config))
    upload(tmp_path / "clip", f"{gcs_dir}/clip")
    remote = ImageTransform.from_preprocessor_config(f"{gcs_dir}/clip", 224)
    assert remote == ImageTransform.from_preprocessor_config(tmp_path / "clip", 224) and remote.resize == 256
    assert ImageTransform.from_preprocessor_config(f"{gcs_dir}/none", 224) == ImageTransform.openai(224)


# --------------------------------------------------------------------------- #
# Missing files: the local error, naming the gs:// path
# --------------------------------------------------------------------------- #
def test_missing_dataset_files_named(tmp_path, gcs_dir):
    local, remote = str(tmp_path / "none"), f"{gcs_dir}/none"
    for name in ("caltech101", "fgvc_aircraft", "imagenet", "imagenet_a"):
        _assert_same_error(lambda root, name=name: load_dataset(name, root), local, remote)
    e = _assert_same_error(lambda root: load_dataset("dtd", root), local, remote)
    assert isinstance(e, errors.DataError) and f"data root folder at {remote}" in str(e)
    _assert_same_error(lambda root: load_folder(root), local, remote)
    _assert_same_error(list_images, local, remote)
    _assert_same_error(load_image, f"{local}/x.jpg", f"{remote}/x.jpg")

    _coop_tree(tmp_path / "data", "dtd", ["a", "b"])
    (tmp_path / "data" / "dtd" / "split_zhou_DescribableTextures.json").unlink()
    upload(tmp_path / "data", gcs_dir)
    e = _assert_same_error(lambda root: load_dataset("dtd", root), str(tmp_path / "data"), gcs_dir)
    assert isinstance(e, errors.DataError) and f"{gcs_dir}/dtd/split_zhou_DescribableTextures.json" in str(e)


def test_missing_prompt_files_named(tmp_path, gcs_dir, capsys):
    local, remote = str(tmp_path / "none.json"), f"{gcs_dir}/none.json"
    e = _assert_same_error(read_class_descriptions, local, remote)
    assert isinstance(e, errors.PromptFileError) and "No such file or directory" in str(e)
    for read in (read_coco_captions, read_jsonl_captions, gen.read_questions, cli.read_classname_lines,
                 lambda p: captions.read_karpathy(p, gcs_dir)):
        _assert_same_error(read, local, remote)
    assert cli.main(["check", "--classnames", remote, "--prompts", remote]) == 2
    assert remote in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
