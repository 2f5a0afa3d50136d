"""The zero-shot job: class weights, jitted scores, CLI output, bad input."""

import numpy as np
import pytest
from PIL import Image

from aape_jax import clip, zeroshot
from aape_jax.clip import tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return clip.load(tiny.write_checkpoint(tmp_path_factory.mktemp("ckpt")))


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_class_weights_are_normalised_template_ensembles(model):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    w = zeroshot.class_weights(model, ["cat", "dog"], templates)
    z = model.encode_text(model.tokenize([t.format(c) for c in ["cat", "dog"] for t in templates]))
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    expected = z.reshape(2, 2, -1).mean(1)
    np.testing.assert_allclose(w, expected / np.linalg.norm(expected, axis=-1, keepdims=True), atol=1e-6)


def test_predict_matches_manual_softmax(model, image_dir):
    paths = zeroshot.list_images([str(image_dir)])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.png", "b.jpg", "c.png"]
    w = zeroshot.class_weights(model, ["cat", "dog", "bird"], [zeroshot.DEFAULT_TEMPLATE])
    probs = zeroshot.predict(model, paths, w, batch_size=2)
    zi = model.encode_image(model.preprocess(paths))
    logits = model.logit_scale * (zi / np.linalg.norm(zi, axis=-1, keepdims=True)) @ w.T
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), atol=1e-5)


def test_cli_prints_topk_per_image(model, image_dir, capsys):
    assert zeroshot.main(["--clip", model.source, "--images", str(image_dir / "a.png"), str(image_dir / "sub"),
                          "--classes", "cat, dog,bird", "--topk", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        path, *top = line.split("\t")
        assert len(top) == 2 and all(t.split("=")[0] in {"cat", "dog", "bird"} for t in top)
        assert float(top[0].split("=")[1]) >= float(top[1].split("=")[1])


def test_bad_input(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        zeroshot.list_images([str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="no image files"):
        zeroshot.list_images([str(tmp_path)])
    with pytest.raises(ValueError, match="exactly one"):
        zeroshot.class_weights(model, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="no class names"):
        zeroshot.class_weights(model, [], ["{}"])
    (tmp_path / "t.txt").write_text("# only a comment\n")
    with pytest.raises(ValueError, match="t.txt holds no templates"):
        zeroshot.read_templates(str(tmp_path / "t.txt"))
