"""Caption metrics (aape_jax.captioning.metrics): CIDEr-D against hand values and pycocoevalcap, COCO scores, CLIP-S.

pycocoevalcap comes with the test extra and Java (OpenJDK 17) is on every machine the suite runs on: the tests
that need them fail, never skip, where either is missing.
"""

import math
import shutil
import sys

import numpy as np
import pytest

from aape_jax.captioning import metrics


def _needs_java():
    assert shutil.which("java") is not None, "no `java` on PATH (pycocoevalcap's PTB tokenizer and METEOR need it)"


# ----------------------------------------------------------------------------- CIDEr-D by hand


def test_cider_d_hand_computed_two_images():
    # Two images, log N = log 2; every n-gram occurs in one reference set (df 1), so every
    # weight is tf * log 2. Each candidate equals its only reference: the 1- and 2-gram
    # cosines are 1, there are no 3- or 4-grams (norm 0 -> 0), lengths agree (penalty 1):
    # mean over n = (1 + 1 + 0 + 0) / 4 = 0.5, / 1 reference, x 10 = 5 per image -> 5.
    assert metrics.cider_d({"A": "a b", "B": "c d"}, {"A": ["a b"], "B": ["c d"]}) == pytest.approx(5.0)


def test_cider_d_length_penalty_by_hand():
    # Image A's candidate "a b a b" against "a b": unigram tf (2, 2) vs (1, 1): clipped dot
    # = min(2w, w) * w * 2 = 2w^2, norms 2*sqrt(2)w and sqrt(2)w -> cos 0.5. Bigrams of the
    # candidate: (a b) x2, (b a) x1; of the reference: (a b) x1. Clipped dot = w^2; norms
    # sqrt(5)w and w -> 1/sqrt(5). No 3-/4-grams in the reference -> 0. Length = bigram
    # count: 3 vs 1, delta 2 -> penalty exp(-4 / 72). Image B as in the test above: 5.
    penalty = math.exp(-4 / 72)
    image_a = (0.5 + 1 / math.sqrt(5)) / 4 * 10 * penalty
    got = metrics.cider_d({"A": "a b a b", "B": "c d"}, {"A": ["a b"], "B": ["c d"]})
    assert got == pytest.approx((image_a + 5.0) / 2)


def test_cider_d_needs_a_corpus():
    # One image: idf = log 1 - log 1 = 0 for every n-gram, so everything scores 0.
    assert metrics.cider_d({1: "a dog runs"}, {1: ["a dog runs"]}) == 0.0


def test_cider_d_simple_tokenization():
    assert metrics.simple_tokenize("A man's red-and-white HAT.") == ["a", "man", "s", "red", "and", "white", "hat"]
    refs = {"A": ["A b."], "B": ["c, D!"]}
    assert metrics.cider_d({"A": "a B", "B": "C d"}, refs) == pytest.approx(5.0)
    # tokenize=False splits on whitespace only: "B." is not "b", so the score drops.
    assert metrics.cider_d({"A": "a B", "B": "C d"}, refs, tokenize=False) < 1.0


# ----------------------------------------------------------------------------- CIDEr-D vs pycocoevalcap

# Pre-tokenised (lowercase, no punctuation): several images, lengths 0..14, repeated words,
# an n-gram shared by every reference set (idf 0), duplicate references, a one-word candidate.
_CANDIDATES = {
    1: "a man riding a horse on a beach",
    2: "two dogs dogs dogs playing in the grass",
    3: "a cat",
    4: "a red double decker bus driving down a busy city street next to tall buildings",
    5: "pizza",
    6: "",
    7: "a a a a a a",
}
_REFERENCES = {
    1: ["a man rides a brown horse along the beach", "a person on a horse at the sea shore",
        "man riding horse on sand", "a man riding a horse on a beach"],
    2: ["two dogs play in the grass", "a pair of dogs running on a lawn", "dogs playing outside"],
    3: ["a cat sitting on a couch", "a small cat on a sofa", "a cat", "a cat"],
    4: ["a red bus on a city street", "a double decker bus in a busy street with buildings",
        "a bus driving down the road"],
    5: ["a pizza with cheese and tomatoes on a table", "a slice of pizza"],
    6: ["an empty room with a chair", "a chair in a room"],
    7: ["a a", "a group of people"],
}


def test_cider_d_equals_pycocoevalcap():
    from pycocoevalcap.cider import cider
    want, _ = cider.Cider().compute_score(_REFERENCES, {i: [c] for i, c in _CANDIDATES.items()})
    got = metrics.cider_d(_CANDIDATES, _REFERENCES, tokenize=False)
    assert got == pytest.approx(float(want), abs=1e-6)
    assert got == pytest.approx(metrics.cider_d(_CANDIDATES, _REFERENCES), abs=1e-12)  # already clean tokens
    # A subset changes the idf, and the two implementations still agree.
    sub = [1, 2, 4]
    want, _ = cider.Cider().compute_score({i: _REFERENCES[i] for i in sub}, {i: [_CANDIDATES[i]] for i in sub})
    got = metrics.cider_d({i: _CANDIDATES[i] for i in sub}, {i: _REFERENCES[i] for i in sub}, tokenize=False)
    assert got == pytest.approx(float(want), abs=1e-6)


# ----------------------------------------------------------------------------- input errors


def test_caption_input_errors():
    with pytest.raises(ValueError, match="no candidate"):
        metrics.cider_d({}, {})
    with pytest.raises(ValueError, match=r"12 ids without references: 'c0'.*'c9' and 2 more"):
        metrics.cider_d({f"c{i}": "x" for i in range(12)}, {})
    with pytest.raises(ValueError, match=r"ids without a candidate: 'r'"):
        metrics.cider_d({1: "x"}, {1: ["x"], "r": ["y"]})
    with pytest.raises(ValueError, match="id 7 has an empty reference list"):
        metrics.cider_d({1: "x", 7: "y"}, {1: ["x"], 7: []})
    with pytest.raises(TypeError, match="list of str"):
        metrics.cider_d({1: "x"}, {1: "x"})
    with pytest.raises(TypeError, match="one str"):
        metrics.cider_d({1: ["x"]}, {1: ["x"]})


def test_coco_caption_scores_without_java(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs Java.*install a Java runtime"):
        metrics.coco_caption_scores({1: "x"}, {1: ["x"]})
    # Checked before anything else, even before the inputs.
    with pytest.raises(RuntimeError, match="needs Java"):
        metrics.coco_caption_scores({1: "x"}, {2: ["x"]})
    with pytest.raises(RuntimeError, match="needs Java"):
        metrics.tokenize_ptb({1: ["x"]})


def test_coco_caption_scores_without_pycocoevalcap(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    for name in ("pycocoevalcap", "pycocoevalcap.bleu", "pycocoevalcap.bleu.bleu"):
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[captioning\]"'):
        metrics.coco_caption_scores({1: "x"}, {1: ["x"]})


def test_coco_caption_scores_checks_ids(monkeypatch):
    # No Java or pycocoevalcap needed: the ids are checked before anything runs.
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(metrics, "_import_pycocoevalcap", lambda: (None, None, None, None))
    with pytest.raises(ValueError, match="ids without references: 2"):
        metrics.coco_caption_scores({1: "x", 2: "y"}, {1: ["x"]})
    with pytest.raises(ValueError, match="id 1 has an empty reference list"):
        metrics.coco_caption_scores({1: "x"}, {1: []})


# ----------------------------------------------------------------------------- through pycocoevalcap (Java)


def test_tokenize_ptb():
    _needs_java()
    out = metrics.tokenize_ptb({"a": ["A man's hat, on a DOG.", ""], "b": ["Two dogs!"], "c": []})
    assert out == {"a": ["a man 's hat on a dog", ""], "b": ["two dogs"], "c": []}
    # Java breaks lines at "\r" and U+2028 too; left in, they would shift captions onto other ids.
    out = metrics.tokenize_ptb({1: ["a dog\rruns", "two"], 2: ["cat\u2028here"], 3: ["last"]})
    assert out == {1: ["a dog runs", "two"], 2: ["cat here"], 3: ["last"]}


def test_coco_caption_scores_match_pycocoevalcap():
    _needs_java()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    candidates = {1: "A man riding a horse, on the beach.", 2: "Two dogs playing in grass!", 3: "A cat on a sofa"}
    references = {1: ["A man rides a horse along the beach.", "A person on a horse by the sea."],
                  2: ["Two dogs play in the grass.", "Dogs playing outside."],
                  3: ["A cat sitting on a couch.", "A small cat on a sofa."]}
    # Every id, and a subset scored as a corpus of its own (NoCaps' domains), with one METEOR process.
    by_subset = metrics.coco_caption_scores_by_subset(candidates, references, {"all": [1, 2, 3], "two": [1, 3]})
    assert by_subset["all"] == metrics.coco_caption_scores(candidates, references)
    gts = metrics.tokenize_ptb(references)
    res = metrics.tokenize_ptb({i: [c] for i, c in candidates.items()})
    for name, ids in (("all", [1, 2, 3]), ("two", [1, 3])):
        scores, g, r = by_subset[name], {i: gts[i] for i in ids}, {i: res[i] for i in ids}
        assert set(scores) == {"bleu_4", "meteor", "cider_d"}
        assert scores["bleu_4"] == pytest.approx(Bleu(4).compute_score(g, r, verbose=0)[0][3])
        assert scores["cider_d"] == pytest.approx(float(Cider().compute_score(g, r)[0]))
        assert scores["cider_d"] == pytest.approx(metrics.cider_d(
            {i: x[0] for i, x in r.items()}, g, tokenize=False), abs=1e-6)
        assert 0.0 < scores["meteor"] < 1.0 and 0.0 < scores["bleu_4"] < 1.0
    assert by_subset["two"]["cider_d"] != pytest.approx(by_subset["all"]["cider_d"])  # its own idf
    with pytest.raises(ValueError, match="subset 'bad' is empty or names ids without a candidate: 7"):
        metrics.coco_caption_scores_by_subset(candidates, references, {"bad": [1, 7]})


# ----------------------------------------------------------------------------- CLIP-S, RefCLIP-S by hand


def test_clip_s_hand_computed():
    # Image 1: (2, 0) vs (3, 3): cos = 1/sqrt(2) (norms do not matter) -> 2.5/sqrt(2) = 1.7678.
    # Image 2: (0, 1) vs (1, -1): cos = -1/sqrt(2) < 0 -> clipped to 0.
    # Mean: 1.7678 / 2 = 0.8839.
    image = np.array([[2.0, 0.0], [0.0, 1.0]])
    caption = np.array([[3.0, 3.0], [1.0, -1.0]])
    assert metrics.clip_s(image, caption) == pytest.approx(2.5 / math.sqrt(2) / 2)
    assert metrics.clip_s(image[:1], caption[:1]) == pytest.approx(2.5 / math.sqrt(2))
    assert metrics.CLIP_S_PREFIX == "A photo depicts"


def test_refclip_s_hand_computed():
    image = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    caption = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, -2.0], [5.0, 0.0, 0.0]])
    refs = np.zeros((3, 3, 3))
    mask = np.zeros((3, 3), dtype=bool)
    # Image 1: CLIP-S a = 2.5 * 0.6 = 1.5. References (0, 1, 0) -> cos 0.8 and (0, 0, 1) -> 0;
    # a masked-out copy of the caption (cos 1) must be ignored: b = 0.8.
    # H = 2 * 1.5 * 0.8 / (1.5 + 0.8) = 2.4 / 2.3 = 1.0435 (w-scaled CLIP-S; unscaled would give 0.686).
    refs[0, :3] = [[0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]
    mask[0, :2] = True
    # Image 2: cos(image, caption) = -1 -> a = 0; reference equals the caption, b = 1 -> H = 0.
    refs[1, 0] = [0.0, 0.0, -1.0]
    mask[1, 0] = True
    # Image 3: a = 2.5; the only reference is opposite (cos -1), clipped to b = 0 -> H = 0.
    refs[2, 0] = [-1.0, 0.0, 0.0]
    mask[2, 0] = True
    assert metrics.refclip_s(image[:1], caption[:1], refs[:1], mask[:1]) == pytest.approx(2.4 / 2.3)
    assert metrics.refclip_s(image, caption, refs, mask) == pytest.approx(2.4 / 2.3 / 3)


def test_clip_feature_errors():
    unit = np.eye(2)
    with pytest.raises(ValueError, match="must have one shape"):
        metrics.clip_s(unit, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"all-zero feature vectors at \[\(1,\)\]"):
        metrics.clip_s(unit, np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.clip_s(unit, np.array([[1.0, np.nan], [0.0, 1.0]]))
    refs = np.ones((2, 2, 2))
    with pytest.raises(ValueError, match=r"without any reference.*\[1\]"):
        metrics.refclip_s(unit, unit, refs, np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match=r"reference_mask \[N, R\]"):
        metrics.refclip_s(unit, unit, refs, np.ones((2, 3), dtype=bool))
    with pytest.raises(TypeError, match="bool"):
        metrics.refclip_s(unit, unit, refs, np.ones((2, 2)))
