"""The built-in synthetic coloured-shapes dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aape_jax.data import synthetic
from aape_jax.data.types import Example, ImageDataset


def test_sizes_labels_keys_and_images():
    ds = synthetic.make_dataset(num_classes=5, train_per_class=3, test_per_class=2, image_size=40, seed=7)
    assert isinstance(ds, ImageDataset)
    assert ds.name == "synthetic" and ds.val == []
    assert ds.classnames == list(synthetic.CLASSNAMES[:5])
    assert len(ds.train) == 15 and len(ds.test) == 10
    assert [e.label for e in ds.train] == [c for c in range(5) for _ in range(3)]
    assert [e.label for e in ds.test] == [c for c in range(5) for _ in range(2)]
    assert ds.train[4].key == "synthetic/seed7/train/00004"
    assert ds.test[9].key == "synthetic/seed7/test/00009"
    keys = [e.key for e in ds.train + ds.test]
    assert len(set(keys)) == len(keys)
    for e in ds.train + ds.test:
        assert isinstance(e, Example)
        assert e.image.dtype == np.uint8 and e.image.shape == (40, 40, 3)


def test_deterministic_per_seed_and_seeds_differ():
    a = synthetic.make_dataset(num_classes=4, train_per_class=2, test_per_class=1, seed=3)
    b = synthetic.make_dataset(num_classes=4, train_per_class=2, test_per_class=1, seed=3)
    c = synthetic.make_dataset(num_classes=4, train_per_class=2, test_per_class=1, seed=4)
    for x, y in zip(a.train + a.test, b.train + b.test):
        assert x.key == y.key and x.label == y.label
        np.testing.assert_array_equal(x.image, y.image)
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a.train, c.train))
    # Train and test images are different draws.
    assert not np.array_equal(a.train[0].image, a.test[0].image)


def test_images_do_not_depend_on_how_many_classes_were_requested():
    small = synthetic.make_dataset(num_classes=2, train_per_class=2, test_per_class=0)
    big = synthetic.make_dataset(num_classes=6, train_per_class=2, test_per_class=0)
    for x, y in zip(small.train, big.train[:4]):
        np.testing.assert_array_equal(x.image, y.image)


def test_class_names_distinct_real_words():
    names = synthetic.CLASSNAMES
    assert len(names) == synthetic.MAX_CLASSES == 16
    assert len(set(names)) == 16
    for n in names:
        color, shape = n.split(" ")
        assert color in synthetic.COLORS and shape in synthetic.SHAPES
    ds = synthetic.make_dataset(num_classes=16, train_per_class=1, test_per_class=0)
    assert ds.classnames == list(names)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": 17}, {"image_size": 8}, {"train_per_class": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        synthetic.make_dataset(**kwargs)


def _shape_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels far from the image's median colour: mostly the shape."""
    flat = image.reshape(-1, 3).astype(np.float32)
    d = np.linalg.norm(flat - np.median(flat, axis=0), axis=1)
    return flat[d > np.quantile(d, 0.85)]


def test_classes_are_visually_distinct():
    ds = synthetic.make_dataset(num_classes=8, train_per_class=12, test_per_class=12, seed=1)
    # Mean colour of each class's most salient pixels differs between classes
    # (the first 8 classes all have different colours).
    means = np.stack(
        [np.mean([_shape_pixels(e.image).mean(0) for e in ds.train if e.label == c], axis=0) for c in range(8)]
    )
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[~np.eye(8, dtype=bool)].min() > 20.0
    # A nearest-centroid classifier on that colour feature beats chance by far
    # on held-out images: classes are learnable, not just different on average.
    feats = np.stack([_shape_pixels(e.image).mean(0) for e in ds.test])
    pred = np.argmin(np.linalg.norm(feats[:, None] - means[None], axis=-1), axis=1)
    acc = np.mean(pred == np.array([e.label for e in ds.test]))
    assert acc > 0.6


def test_same_colour_classes_differ_in_shape():
    # "red circle" (0) and "red cross" (8): mean silhouette (mask area share) differs.
    ds = synthetic.make_dataset(num_classes=9, train_per_class=20, test_per_class=0)
    names = ds.classnames
    assert names[0].split()[0] == names[8].split()[0] and names[0] != names[8]

    def red_fraction(img: np.ndarray) -> float:
        r, g, b = (img[..., k].astype(int) for k in range(3))
        return float(np.mean((r > 150) & (g < 90) & (b < 90)))

    circle = np.mean([red_fraction(e.image) for e in ds.train if e.label == 0])
    cross = np.mean([red_fraction(e.image) for e in ds.train if e.label == 8])
    # Same scale distribution; a cross covers far less of its bounding circle.
    assert circle > 1.5 * cross > 0


def test_class_descriptions(tmp_path):
    names = synthetic.CLASSNAMES
    desc = synthetic.class_descriptions(names)
    assert list(desc) == list(names)
    for name, sentences in desc.items():
        color, shape = name.split()
        assert 6 <= len(sentences) <= 10
        assert len(set(sentences)) == len(sentences)
        for s in sentences:
            assert isinstance(s, str) and s.endswith(".")
            assert color in s or shape in s
        assert any(color in s and shape in s for s in sentences)
    assert desc["red circle"][0] == "A red circle is a round shape with no corners, filled with a bright red colour."
    path = synthetic.write_class_descriptions(tmp_path / "sub" / "synthetic.json", names[:3])
    assert json.loads(path.read_text()) == synthetic.class_descriptions(names[:3])
    with pytest.raises(ValueError, match="mauve blob"):
        synthetic.class_descriptions(["mauve blob"])
