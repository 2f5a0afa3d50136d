"""AAPEClassifier's per-class-list cache: what it holds, when it is rebuilt, and that scores do not change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aape_jax import ExportedClassifier, clip, inference
from aape_jax.clip import tiny
from aape_jax.clip.model import CLIP
from aape_jax.inference import AAPEClassifier
from aape_jax.models import heads
from aape_jax.models.aape import AAPE, AAPEConfig
from aape_jax.models.heads import make_head
from aape_jax.train_step import make_logits_fn

NAMES = ["cat", "big red dog", "a", "photo of the bird", "tabby cat"]  # EOT positions differ


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return clip.load(tiny.write_checkpoint(tmp_path_factory.mktemp("tiny_clip")))


def _classifier(frozen, combine: str, token_position: str) -> AAPEClassifier:
    """Random weights, perturbed so that the feature head's zero-initialised map is not zero."""
    d = frozen.config.projection_dim
    head = make_head(combine, d, frozen.config.text.hidden_size, 2, token_position)
    cfg = AAPEConfig(embed_dim=d, head=head, num_heads=4, generator_hidden=8)
    model = AAPE(cfg)
    d = cfg.embed_dim
    params = model.init(jax.random.key(0), jnp.zeros((1, d)), jnp.zeros((1, 2, d)), jnp.ones((1, 2), bool))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return AAPEClassifier(frozen, model, params, "a photo of a {}.")


def _reference_probs(clf: AAPEClassifier, pixels: np.ndarray, names: list[str]) -> np.ndarray:
    """The scoring as it was before the cache: train_step's logits, a suffix run's prefix cache rebuilt per call."""
    module = clf.clip.module
    logits_fn = make_logits_fn(clf.model, module)

    @jax.jit
    def probs(params, clip_params, pixels, class_text):
        z = module.apply({"params": clip_params}, pixels, method=CLIP.encode_image)
        return jax.nn.softmax(logits_fn(params, z, class_text, clip_params, clip_params["logit_scale"]), axis=-1)

    return np.asarray(probs(clf.params, clf.clip.params, pixels, clf.class_text(names)))


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_suffix_scores_use_the_cached_prefix_and_equal_the_uncached_path(tiny_clip, monkeypatch, tmp_path):
    """predict_proba (two batches) and export never run the class prefixes; both equal the per-call path.

    The prefixes run once, in the class list's `class_cache`, and nowhere else."""
    built_in_scoring, built_in_cache, in_cache = [], [], []

    def counting(*args, **kwargs):
        (built_in_cache if in_cache else built_in_scoring).append(1)
        return cache_fn(*args, **kwargs)

    cache_fn = heads.class_prefix_cache
    monkeypatch.setattr(heads, "class_prefix_cache", counting)  # what class_weights runs without cache=
    clf = _classifier(tiny_clip, "token", "suffix")
    class_cache = clf._class_cache
    cache_calls = []

    def building(class_text, clip_params):
        cache_calls.append(class_text.num_classes)
        in_cache.append(1)
        try:
            return class_cache(class_text, clip_params)
        finally:
            in_cache.pop()

    monkeypatch.setattr(clf, "_class_cache", building)
    images = _images(5)
    probs = clf.predict_proba(images, NAMES, batch_size=3)
    path = tmp_path / "scores.bin"
    clf.export(NAMES, path)
    exported = ExportedClassifier.load(path)(images)
    assert built_in_scoring == []
    assert cache_calls == [len(NAMES)] and built_in_cache == [1]  # built (and traced) once for the class list
    _, prefix_cache = clf._class_lists[tuple(NAMES)]
    assert isinstance(prefix_cache, heads.ClassPrefixCache)
    want = _reference_probs(clf, tiny_clip.preprocess(images), NAMES)
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(exported, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("combine,token_position", [("token", "prefix"), ("feature", "suffix")])
def test_prefix_and_feature_scores_unchanged_bit_for_bit(tiny_clip, combine, token_position):
    """No prefix cache is built for them, and their scores are exactly the pre-cache ones."""
    clf = _classifier(tiny_clip, combine, token_position)
    pixels = tiny_clip.preprocess(_images(3))
    got = clf.predict_proba_pixels(pixels, NAMES)
    assert clf._class_lists[tuple(NAMES)][1] is None
    np.testing.assert_array_equal(got, _reference_probs(clf, pixels, NAMES))


def test_cache_is_per_class_list_reused_renewed_and_bounded(tiny_clip, monkeypatch):
    """The same list reuses its entry; another order is another entry with its own (correct) prefix cache;
    beyond MAX_CLASS_LISTS the least recently used list is dropped and rebuilt when it comes back."""
    clf = _classifier(tiny_clip, "token", "suffix")
    builds = []
    build = clf._class_cache

    def counting(class_text, clip_params):
        builds.append(class_text.num_classes)
        return build(class_text, clip_params)

    monkeypatch.setattr(clf, "_class_cache", counting)
    pixels = tiny_clip.preprocess(_images(2))
    reordered = NAMES[::-1]
    first = clf.predict_proba_pixels(pixels, NAMES)
    entry = clf._class_lists[tuple(NAMES)]
    again = clf.predict_proba_pixels(pixels, list(NAMES))
    assert len(builds) == 1 and clf._class_lists[tuple(NAMES)] is entry
    np.testing.assert_array_equal(again, first)
    flipped = clf.predict_proba_pixels(pixels, reordered)
    assert len(builds) == 2 and set(clf._class_lists) == {tuple(NAMES), tuple(reordered)}
    np.testing.assert_allclose(flipped, _reference_probs(clf, pixels, reordered), rtol=0, atol=1e-5)
    np.testing.assert_allclose(flipped, first[:, ::-1], rtol=0, atol=1e-5)

    clf.class_text(NAMES)  # now the most recently used: `reordered` is dropped first
    for i in range(inference.MAX_CLASS_LISTS - 1):
        clf.class_text([f"class {i}"])
    assert len(clf._class_lists) == inference.MAX_CLASS_LISTS and tuple(reordered) not in clf._class_lists
    count = len(builds)
    clf.class_text(NAMES)
    assert len(builds) == count
    clf.class_text(reordered)
    assert len(builds) == count + 1


def test_predict_proba_pixels_names_the_expected_shape(tiny_clip):
    clf = _classifier(tiny_clip, "token", "suffix")
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
        clf.predict_proba_pixels(np.zeros((2, 16, 16, 3), np.float32), NAMES)


def test_inference_benchmark_times_the_classifier(monkeypatch):
    """`bench inference` scores through AAPEClassifier.predict_proba_pixels, suffix and prefix, at every C."""
    from aape_jax import bench

    calls = set()
    real = AAPEClassifier.predict_proba_pixels

    def counting(self, pixels, class_names):
        calls.add((self.model.config.head.position, len(class_names)))
        return real(self, pixels, class_names)

    results = []
    monkeypatch.setattr(AAPEClassifier, "predict_proba_pixels", counting)
    monkeypatch.setattr(bench, "report", lambda name, config, figures, result, reference=None: results.append(result))
    bench.main(["inference", "--smoke"])
    assert calls == {(position, c) for position in ("suffix", "prefix") for c in (10, 100)}
    assert set(results[0]["ms_per_image"]) == {"zeroshot", "aape_suffix", "aape_prefix"}
