"""The shared harness: evaluator, every baseline's runlocal, the linear probe, protocols, a CoOp-layout run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aape_jax import clip, evaluate, methods, numerics, sharding, train, trainer
from aape_jax.clip import tiny
from aape_jax.configs import classification
from aape_jax.data import protocol, synthetic
from aape_jax.data.feature_store import FeatureStore
from aape_jax.errors import BadImageError
from experiments import aape_cross_dataset, aape_fewshot


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("feature_store"))


def _config(method, store, arg="runlocal", **overrides):
    config = classification.base2new(arg, method)
    config.feature_store = store
    config.num_epochs = 3
    config.update_from_flattened_dict(overrides)
    return config


def test_evaluator_on_an_analytic_model():
    # Class c scores image i by -(x_i - c)^2 on a 1-D feature: known argmax, known accuracy.
    rng = np.random.default_rng(0)
    features = rng.uniform(-0.5, 4.5, size=(101, 1)).astype(np.float32)
    truth = np.clip(np.round(features[:, 0]), 0, 4).astype(int)
    labels = truth.copy()
    labels[::4] = (labels[::4] + 1) % 5  # a quarter of the labels made wrong
    centres = jnp.arange(5.0)

    def logits_fn(params, z, class_text, clip_params, logit_scale):
        return -(z - class_text[None, :]) ** 2 * params

    out = evaluate.logits(logits_fn, jnp.float32(1.0), features, centres, None, jnp.float32(0.0),
                          sharding.make_mesh(), batch_size=12)
    assert out.shape == (101, 5)
    expected = 100.0 * np.mean(truth == labels)
    assert protocol.accuracy(out.argmax(-1), labels) == pytest.approx(expected)
    assert 70 < expected < 80


@pytest.mark.parametrize("method", ["zeroshot_clip", "cupl", "linear_probe", "coop", "cocoop", "kgcoop", "aape"])
def test_every_baseline_runlocal_completes(method, store, tmp_path):
    metrics = train.train_and_evaluate(_config(method, store), str(tmp_path))
    assert metrics["method"] == method
    for key in ("base_acc", "new_acc", "harmonic_mean"):
        assert 0.0 <= metrics[key] <= 100.0
    on_disk = json.load(open(tmp_path / "metrics.json"))
    assert on_disk["harmonic_mean"] == pytest.approx(numerics.harmonic_mean(on_disk["base_acc"], on_disk["new_acc"]))
    trains = method not in ("zeroshot_clip", "cupl")
    assert (metrics["train_loss"] is not None) == trains
    if trains:
        assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    if method == "kgcoop":  # CE plus its own term, weighted (epoch means are linear in the per-step parts)
        last = metrics["history"][-1]  # the context starts at the hand-crafted prompt: the term grows from 0
        assert last["kg"] > 0.01
        assert last["loss"] == pytest.approx(last["ce"] + _config(method, store).baseline.kg_weight * last["kg"])


def test_zeroshot_ensemble_differs_from_single_template(store, tmp_path):
    single = train.train_and_evaluate(_config("zeroshot_clip", store), str(tmp_path / "a"))
    ensemble = train.train_and_evaluate(_config("zeroshot_clip", store, "runlocal,templates=ensemble"),
                                        str(tmp_path / "b"))
    assert single["base_per_class_acc"] != ensemble["base_per_class_acc"] or \
        single["new_per_class_acc"] != ensemble["new_per_class_acc"]


def test_linear_probe_separates_linearly_separable_features(tmp_path):
    model = clip.load(tiny.write_checkpoint(tmp_path / "clip"))
    config = _config("linear_probe", str(tmp_path / "store"), **{"optim.learning_rate": 0.05})
    names = ["red circle", "blue square", "green triangle"]
    learner = methods.build(config, model, FeatureStore(tmp_path / "store"), names, lambda n: [])
    d = model.config.projection_dim
    rng = np.random.default_rng(0)
    means = np.linalg.qr(rng.normal(size=(d, 3)))[0].T * 3  # orthogonal class directions
    labels = np.repeat(np.arange(3), 32)
    features = (means[labels] + 0.3 * rng.normal(size=(96, d))).astype(np.float32)
    run = trainer.TrainingRun(init_params=learner.init_params, make_loss=learner.make_loss,
                              step_data=learner.step_data, features=features[:, None], labels=labels,
                              prompt_rows=labels)
    config.num_epochs = 30
    config.checkpoint_every_epochs = 100
    params, history = trainer.fit(run, config, str(tmp_path / "work"), sharding.make_mesh())
    before = evaluate.logits(learner.logits_fn, learner.init_params(jax.random.key(0)), features,
                             learner.class_text(names), None, model.params["logit_scale"], sharding.make_mesh(), 32)
    after = evaluate.logits(learner.logits_fn, params, features, learner.class_text(names), None,
                            model.params["logit_scale"], sharding.make_mesh(), 32)
    assert protocol.accuracy(after.argmax(-1), labels) == 100.0
    assert protocol.accuracy(before.argmax(-1), labels) < 90.0  # zero-shot weights alone do not separate them
    # Classes the probe never saw keep their zero-shot weights.
    unseen = evaluate.logits(learner.logits_fn, params, features, learner.class_text(["white ring"]), None,
                             model.params["logit_scale"], sharding.make_mesh(), 32)
    zero = evaluate.logits(learner.logits_fn, learner.init_params(jax.random.key(0)), features,
                           learner.class_text(["white ring"]), None, model.params["logit_scale"],
                           sharding.make_mesh(), 32)
    np.testing.assert_allclose(unseen, zero, atol=1e-5)


def test_fewshot_and_transfer_protocols(store, tmp_path):
    fewshot = aape_fewshot.get_config("runlocal")
    fewshot.feature_store, fewshot.num_epochs = store, 2
    m = train.train_and_evaluate(fewshot, str(tmp_path / "fewshot"))
    assert set(m) >= {"all_acc", "all_per_class_acc"} and len(m["all_per_class_acc"]) == 10
    xd = aape_cross_dataset.get_config("runlocal")
    xd.feature_store, xd.num_epochs = store, 2
    m = train.train_and_evaluate(xd, str(tmp_path / "xd"))
    assert m["target_mean_acc"] == m["synthetic_acc"]


def _write_coop_tree(root):
    """A DTD-shaped CoOp tree (images + split_zhou_DescribableTextures.json) from the synthetic set."""
    data = synthetic.make_dataset(num_classes=4, train_per_class=16, test_per_class=4, image_size=32)
    base = root / "dtd"
    split = {"train": [], "val": [], "test": []}
    for part, examples in (("train", data.train), ("test", data.test)):
        for i, e in enumerate(examples):
            name = data.classnames[e.label].replace(" ", "_")
            rel = f"{name}/{part}_{i:03d}.png"
            (base / "images" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(e.image).save(base / "images" / rel)
            split[part].append([rel, e.label, name])
    (base / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    prompts = synthetic.class_descriptions(data.classnames)
    (root / "prompts.json").write_text(json.dumps({k.replace(" ", "_"): v for k, v in prompts.items()}))
    return data.classnames


def test_base2new_on_a_coop_layout_tree(store, tmp_path):
    _write_coop_tree(tmp_path / "data")
    config = _config("aape", store, **{"dataset.name": "dtd", "dataset.root": str(tmp_path / "data"),
                                       "prompts.path": str(tmp_path / "data" / "prompts.json"),
                                       "dataset.shots": 8, "batch_size": 16})
    metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert len(metrics["base_per_class_acc"]) == 2 and len(metrics["new_per_class_acc"]) == 2
    assert os.listdir(os.path.join(store, "fewshot"))


def test_undecodable_images_fail_or_are_skipped_and_listed(store, tmp_path):
    _write_coop_tree(tmp_path / "data")
    split = json.loads((tmp_path / "data" / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    bad_train, bad_test = split["train"][3][0], split["test"][9][0]  # a base-class train image, a new-class test one
    for rel in (bad_train, bad_test):
        (tmp_path / "data" / "dtd" / "images" / rel).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    overrides = {"dataset.name": "dtd", "dataset.root": str(tmp_path / "data"), "dataset.shots": 16,
                 "batch_size": 16, "feature_store": str(tmp_path / "store")}
    with pytest.raises(BadImageError, match=bad_train.split("/")[-1]):
        train.train_and_evaluate(_config("linear_probe", store, **overrides), str(tmp_path / "fail"))
    metrics = train.train_and_evaluate(_config("linear_probe", store, **overrides, **{"dataset.on_bad_image": "skip"}),
                                       str(tmp_path / "skip"))
    assert metrics["skipped_images"] == {"train": [bad_train], "new": [bad_test]}
    assert json.load(open(tmp_path / "skip" / "metrics.json"))["skipped_images"]["new"] == [bad_test]
    assert 0 <= metrics["new_acc"] <= 100


def test_unknown_method_and_protocol(store, tmp_path):
    with pytest.raises(ValueError, match="config.method is 'prompt_magic'"):
        train.train_and_evaluate(_config("prompt_magic", store), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="config.protocol is 'zero'"):
        train.train_and_evaluate(_config("aape", store, protocol="zero"), str(tmp_path / "b"))
