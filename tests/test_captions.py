"""Caption sources: Karpathy JSON (COCO, Flickr30k), TFDS coco_captions records, the synthetic captioned set."""

import json
import sys

import numpy as np
import PIL.Image
import pytest

from aape_jax.data import captions
from aape_jax.data.synthetic import COLORS, SHAPES
from aape_jax.data.synthetic_captions import CAPTIONS_PER_IMAGE, make_captioned_dataset


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def _sentences(*raw):
    return [{"raw": r, "tokens": r.lower().split()} for r in raw]


def _coco_tree(tmp_path, skip_file=None, extra=None):
    entries = [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "imgid": 0,
         "sentences": _sentences("A cat on a mat.", "  A cat.  ", "")},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "imgid": 1,
         "sentences": _sentences("A dog.")},
        {"filepath": "val2014", "filename": "c.jpg", "split": "val", "imgid": 2, "sentences": _sentences("A bird.")},
        {"filepath": "val2014", "filename": "d.jpg", "split": "test", "imgid": 3,
         "sentences": _sentences("A fish.", "A fish in water.")},
    ] + (extra or [])
    for e in entries:
        if "filename" in e and e["filename"] != skip_file:
            _image(tmp_path / e["filepath"] / e["filename"])
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def test_karpathy_coco_splits_restval_into_train(tmp_path):
    ds = captions.read_karpathy(_coco_tree(tmp_path), tmp_path)
    assert ds.name == "coco"
    assert [im.key for im in ds.train] == ["train2014/a.jpg", "val2014/b.jpg"]
    assert [im.key for im in ds.val] == ["val2014/c.jpg"] and [im.key for im in ds.test] == ["val2014/d.jpg"]
    assert ds.train[0].captions == ("A cat on a mat.", "A cat.")  # stripped, empties dropped
    assert ds.train[0].image == str(tmp_path / "train2014" / "a.jpg")
    assert ds.test[0].captions == ("A fish.", "A fish in water.")


def test_karpathy_flickr_has_no_filepath(tmp_path):
    entries = [{"filename": f"{i}.jpg", "split": s, "imgid": i, "sentences": _sentences(f"caption {i}", "x")}
               for i, s in enumerate(["train", "train", "val", "test"])]
    for e in entries:
        _image(tmp_path / e["filename"])
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    ds = captions.read_karpathy(path, tmp_path)
    assert ds.name == "flickr30k" and len(ds.train) == 2 and ds.test[0].key == "3.jpg"
    assert ds.test[0].image == str(tmp_path / "3.jpg")


def test_missing_image_file_is_named(tmp_path):
    path = _coco_tree(tmp_path, skip_file="c.jpg")
    with pytest.raises(FileNotFoundError, match=r"1 image file.*val2014/c\.jpg"):
        captions.read_karpathy(path, tmp_path)
    assert len(captions.read_karpathy(path, tmp_path, check_files=False).val) == 1


def test_image_without_caption_is_named(tmp_path):
    extra = [{"filepath": "val2014", "filename": "e.jpg", "split": "test", "imgid": 4,
              "sentences": _sentences("   ")}]
    with pytest.raises(ValueError, match=r"without any caption: 'val2014/e\.jpg'"):
        captions.read_karpathy(_coco_tree(tmp_path, extra=extra), tmp_path)


@pytest.mark.parametrize("entry, message", [
    ({"filepath": "val2014", "filename": "a.jpg", "split": "train", "sentences": []}, "more than once"),
    ({"filepath": "val2014", "filename": "z.jpg", "split": "holdout", "sentences": []}, "split 'holdout'"),
    ({"filepath": "val2014", "split": "train", "sentences": []}, "needs a string 'filename'"),
    ({"filepath": "val2014", "filename": "z.jpg", "split": "train", "sentences": [{"x": 1}]}, "needs a string 'raw'"),
])
def test_malformed_entries(tmp_path, entry, message):
    tree = _coco_tree(tmp_path, extra=[dict(entry, filepath="train2014")] if "more" in message else [entry])
    with pytest.raises(ValueError, match=message):
        captions.read_karpathy(tree, tmp_path)


def test_invalid_json(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        captions.read_karpathy(path, tmp_path)


def _records():
    return [
        {"image/filename": b"COCO_val2014_1.jpg", "captions": {"text": np.array([b"A man.", b" A person. "])},
         "image": np.full((6, 7, 3), 10, np.uint8)},
        {"image/filename": b"COCO_val2014_2.jpg", "captions": {"text": np.array([b"A horse."])},
         "image": np.full((5, 5, 3), 200, np.uint8)},
    ]


def test_tfds_records_in_memory_and_exported(tmp_path):
    images = captions.load_tfds_coco_captions("test", dataset=_records())
    assert [im.key for im in images] == ["COCO_val2014_1.jpg", "COCO_val2014_2.jpg"]
    assert images[0].captions == ("A man.", "A person.") and images[0].image.shape == (6, 7, 3)
    exported = captions.load_tfds_coco_captions("test", dataset=_records(), image_dir=tmp_path)
    saved = np.asarray(PIL.Image.open(exported[1].image))
    assert exported[1].image.endswith("COCO_val2014_2.png") and (saved == 200).all()
    # Encoded bytes (tfds.decode.SkipDecoding) are written verbatim.
    records = _records()
    jpeg = tmp_path / "src.jpg"
    PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(jpeg)
    records[0]["image"] = jpeg.read_bytes()
    out = captions.captioned_images_from_records(records, "mock", image_dir=tmp_path / "out")
    assert open(out[0].image, "rb").read() == jpeg.read_bytes()


def test_tfds_record_without_caption(tmp_path):
    records = _records()
    records[1]["captions"]["text"] = np.array([b"  "])
    with pytest.raises(ValueError, match="COCO_val2014_2.jpg"):
        captions.load_tfds_coco_captions("val", dataset=records)
    with pytest.raises(ValueError, match="lacks"):
        captions.load_tfds_coco_captions("val", dataset=[{"image": np.zeros((2, 2, 3), np.uint8)}])


def test_tfds_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails, as when not installed
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        captions.load_tfds_coco_captions("test")


def test_limit_captions_and_examples(tmp_path):
    ds = captions.read_karpathy(_coco_tree(tmp_path), tmp_path)
    limited = captions.limit_captions(ds.test, 1)
    assert limited[0].captions == ("A fish.",) and captions.limit_captions(ds.test, 0) == ds.test
    examples = captions.as_examples(ds.train)
    assert [(e.label, e.key) for e in examples] == [(0, "train2014/a.jpg"), (1, "val2014/b.jpg")]


def test_synthetic_captions_describe_the_scene_deterministically():
    a = make_captioned_dataset(num_train=12, num_test=6, seed=3)
    b = make_captioned_dataset(num_train=20, num_test=6, seed=3)
    assert len(a.train) == 12 and len(a.test) == 6 and a.val == []
    for x, y in zip(a.train, b.train):  # a prefix of a larger set, bit for bit
        assert x.key == y.key and x.captions == y.captions and np.array_equal(x.image, y.image)
    counts = set()
    for im in a.train + a.test:
        assert im.image.shape == (48, 48, 3) and im.image.dtype == np.uint8
        assert len(im.captions) == CAPTIONS_PER_IMAGE == len(set(im.captions))
        objects = {(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" in im.captions[0]}
        counts.add(len(objects))
        for caption in im.captions:  # every caption names every object
            assert all(f"{c} {s}" in caption for c, s in objects)
    assert counts <= {1, 2, 3} and len(counts) > 1
    other = make_captioned_dataset(num_train=4, num_test=0, seed=4)
    assert any(x.captions != y.captions for x, y in zip(a.train, other.train))
