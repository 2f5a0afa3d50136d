"""Retrieval: Recall@K on hand-built matrices, blocked == full, runlocal end to end, pmap == jit, bad input."""

import json
import os

import numpy as np
import pytest

from aape_jax.retrieval import metrics
from aape_jax.retrieval import train as retrieval_train
from experiments import aape_retrieval

# 4 images x 2 captions; ranks worked out by hand in the comments.
TXT_TO_IMG = np.array([0, 0, 1, 1, 2, 2, 3, 3])
SIM = np.array([
    [0.9, 0.1, 0.5, 0.4, 0.3, 0.2, 0.0, 0.6],  # best own 0.9, nothing above: rank 0
    [0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4, 0.5],  # best own 0.6, 0.8 and 0.7 above: rank 2
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],  # best own 0.6, 0.7 and 0.8 above: rank 2
    [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # best own 0.1, six above: rank 6
])
# Text -> image ranks per column: [0, 3, 0, 3, 0, 0, 2, 3].


def test_recall_hand_built_several_captions_per_image():
    i2t, t2i = metrics.ranks_from_blocks(lambda lo, hi: SIM[lo:hi], 4, 8, TXT_TO_IMG, block=3)
    assert i2t.tolist() == [0, 2, 2, 6]
    assert t2i.tolist() == [0, 3, 0, 3, 0, 0, 2, 3]
    r = metrics.recall_at_k(SIM, TXT_TO_IMG)
    assert r == {"i2t_r1": 25.0, "i2t_r5": 75.0, "i2t_r10": 100.0, "t2i_r1": 50.0, "t2i_r5": 100.0,
                 "t2i_r10": 100.0}
    r = metrics.recall_at_k(SIM, TXT_TO_IMG, ks=(2, 3))
    assert r == {"i2t_r2": 25.0, "i2t_r3": 75.0, "t2i_r2": 50.0, "t2i_r3": 62.5}


def test_ties_pessimistic_and_optimistic():
    flat = np.zeros((2, 4))
    t = np.array([0, 0, 1, 1])
    assert metrics.recall_at_k(flat, t, ks=(1, 3))["i2t_r1"] == 0.0  # a collapsed model gets nothing
    assert metrics.recall_at_k(flat, t, ks=(1, 3))["i2t_r3"] == 100.0  # 2 wrong captions tie: rank 2
    assert metrics.recall_at_k(flat, t, ties="optimistic") == {k: 100.0 for k in metrics.recall_at_k(flat, t)}
    sim = np.array([[0.5, 0.2, 0.5, 0.1],  # own best 0.5 ties with a wrong caption
                    [0.0, 0.0, 0.3, 0.3]])  # own captions tie with each other: no penalty
    pess = metrics.ranks_from_blocks(lambda lo, hi: sim[lo:hi], 2, 4, t)
    opt = metrics.ranks_from_blocks(lambda lo, hi: sim[lo:hi], 2, 4, t, ties="optimistic")
    assert pess[0].tolist() == [1, 0] and opt[0].tolist() == [0, 0]
    assert pess[1].tolist() == opt[1].tolist() == [0, 0, 1, 0]


def _argsort_reference(sim, txt_to_img):
    i2t = [min(np.argsort(-row, kind="stable").tolist().index(c) for c in np.flatnonzero(txt_to_img == i))
           for i, row in enumerate(sim)]
    t2i = [np.argsort(-sim[:, c], kind="stable").tolist().index(txt_to_img[c]) for c in range(sim.shape[1])]
    return np.array(i2t), np.array(t2i)


@pytest.mark.parametrize("block", [1, 5, 64])
def test_blocked_equals_reference_and_never_exceeds_block(block):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 7, size=37)  # 1..6 captions per image
    txt_to_img = np.repeat(np.arange(37), counts)
    rng.shuffle(txt_to_img)  # captions need not be grouped by image
    img, txt = rng.normal(size=(37, 16)).astype(np.float32), rng.normal(size=(len(txt_to_img), 16)).astype(np.float32)
    sim = img @ txt.T
    shapes = []

    def rows(lo, hi):
        shapes.append(hi - lo)
        return sim[lo:hi]

    got = metrics.ranks_from_blocks(rows, 37, len(txt_to_img), txt_to_img, block=block)
    ref = _argsort_reference(sim, txt_to_img)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    assert max(shapes) <= block
    emb = metrics.similarity_ranks(img, txt, txt_to_img, block=block)
    assert metrics.recalls_from_ranks(*emb) == metrics.recall_at_k(sim, txt_to_img)


def test_bad_similarity_inputs():
    with pytest.raises(ValueError, match=r"image\(s\) have no caption \(e.g. image 2\)"):
        metrics.recall_at_k(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="caption 1 points to image 5, but there are 2 images"):
        metrics.recall_at_k(np.zeros((2, 2)), [0, 5])
    with pytest.raises(ValueError, match=r"txt_to_img must be \[n_txt=3\]"):
        metrics.recall_at_k(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="non-finite similarity nan at image 1, caption 0"):
        metrics.recall_at_k(np.array([[1.0, 0.0], [np.nan, 0.0]]), [0, 1])
    with pytest.raises(ValueError, match="ties"):
        metrics.recall_at_k(np.zeros((1, 1)), [0], ties="random")


# ---------------------------------------------------------------- end to end

RECALL_KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


def _config(store, **overrides):
    config = aape_retrieval.get_config("runlocal")
    config.feature_store = str(store)
    config.dataset.synthetic_train = 128
    config.num_epochs = 8
    config.checkpoint_every_epochs = 4
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("retrieval_store")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store):
    workdir = tmp_path_factory.mktemp("retrieval_run")
    return str(workdir), retrieval_train.train_and_evaluate(_config(store), str(workdir))


def test_runlocal_end_to_end(trained):
    workdir, result = trained
    on_disk = json.load(open(os.path.join(workdir, "metrics.json")))
    for key in RECALL_KEYS:
        for name in (key, f"zeroshot_{key}", f"synthetic_test_{key}", f"synthetic_test_zeroshot_{key}"):
            assert 0.0 <= on_disk[name] <= 100.0, name
        assert on_disk[key] == on_disk[f"synthetic_test_{key}"]
    for prefix in ("", "zeroshot_"):  # R@K grows with K
        assert on_disk[f"{prefix}i2t_r1"] <= on_disk[f"{prefix}i2t_r5"] <= on_disk[f"{prefix}i2t_r10"]
    history = result["history"]
    assert len(history) == 8 and result["num_devices"] == 8
    for part in ("loss", "task", "agg", "distill"):
        assert history[-1][part] < history[0][part], part
    assert on_disk["gamma"] != pytest.approx(0.5)  # the gate learned
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert json.load(open(os.path.join(workdir, "config.json")))["config"]["task"] == "retrieval"


def test_pmap_equals_jit(trained, store, tmp_path):
    _, jit_result = trained
    pmap_result = retrieval_train.train_and_evaluate(_config(store, parallelism="pmap"), str(tmp_path))
    np.testing.assert_allclose([h["loss"] for h in pmap_result["history"]],
                               [h["loss"] for h in jit_result["history"]], rtol=1e-4)


def test_evaluate_only_from_init_reproduces_the_run(trained, store, tmp_path):
    workdir, result = trained
    again = retrieval_train.train_and_evaluate(_config(store, num_epochs=0, init=workdir), str(tmp_path))
    for key in RECALL_KEYS:
        assert again[key] == result[key] and again[f"zeroshot_{key}"] == result[f"zeroshot_{key}"]
    assert again["train_loss"] is None and again["gamma"] == pytest.approx(result["gamma"])


def test_evaluate_only_needs_init(store, tmp_path):
    with pytest.raises(ValueError, match="config.init"):
        retrieval_train.train_and_evaluate(_config(store, num_epochs=0), str(tmp_path))


# ---------------------------------------------------------------- bad input


def _karpathy_tree(root, entries):
    for e in entries:
        path = root / e["filepath"] / e["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))


def _coco_config(root, store):
    from experiments import aape_retrieval_coco

    config = aape_retrieval_coco.get_config("")
    config.clip, config.feature_store = "", str(store)
    config.dataset.root = config.eval.coco_5k.root = str(root)
    return config


def test_caption_pointing_to_a_missing_image_fails_before_any_work(store, tmp_path):
    entries = [{"filepath": "val2014", "filename": f"{i}.jpg", "split": "test", "sentences": [{"raw": "a cat."}]}
               for i in range(3)]
    _karpathy_tree(tmp_path, entries)
    os.remove(tmp_path / "val2014" / "1.jpg")
    with pytest.raises(FileNotFoundError, match=r"val2014/1\.jpg"):
        retrieval_train.train_and_evaluate(_coco_config(tmp_path, store), str(tmp_path / "w"))
    assert not (tmp_path / "w" / "random_clip").exists()  # nothing slow ran


def test_image_without_caption_is_a_clear_error(store, tmp_path):
    entries = [{"filepath": "train2014", "filename": f"{i}.jpg", "split": "train",
                "sentences": [{"raw": "a dog."}] if i else []} for i in range(3)]
    _karpathy_tree(tmp_path, entries)
    with pytest.raises(ValueError, match=r"1 image\(s\) without any caption: 'train2014/0\.jpg'"):
        retrieval_train.train_and_evaluate(_coco_config(tmp_path, store), str(tmp_path / "w"))


def test_bad_score_is_rejected(store, tmp_path):
    with pytest.raises(ValueError, match="model.score"):
        retrieval_train.train_and_evaluate(_config(store, **{"model.score": "product"}), str(tmp_path))
