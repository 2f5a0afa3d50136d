"""The sharded train step: 8 devices == 1 device, pmap == jit, CLIP untouched, one trace."""

import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aape_jax import clip, sharding, trainer
from aape_jax.clip import tiny
from aape_jax.data.text_features import class_text as make_class_text
from aape_jax.models.aape import AAPE, AAPEConfig
from aape_jax.models.heads import make_head
from aape_jax.train_step import LossWeights, StepData, make_loss_fn
from aape_jax.trainer import TrainingRun, TrainState

EPOCHS = 3  # the optimizer's schedule length

NUM_CLASSES, N, K, M = 4, 32, 2, 5


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    return clip.load(tiny.write_checkpoint(tmp_path_factory.mktemp("clip")))


def _config(parallelism="jit", num_devices=0, aggregator="attention"):
    c = ml_collections.ConfigDict()
    c.seed, c.batch_size, c.parallelism, c.num_devices = 3, 16, parallelism, num_devices
    c.loss = ml_collections.ConfigDict({"distill_weight": 1.0, "aggregator_weight": 1.0})
    c.optim = ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                                         "warmup_epochs": 1, "warmup_lr": 1e-3, "grad_clip": 1.0})
    c.model = ml_collections.ConfigDict({"aggregator": aggregator})
    return c


def _model(frozen, combine="token", aggregator="attention"):
    d = frozen.config.projection_dim
    head = make_head(combine, d, frozen.config.text.hidden_size, 1)
    return AAPE(AAPEConfig(d, head=head, aggregator=aggregator, num_heads=4, generator_hidden=8))


def _steps(config):
    return N // config.batch_size


def _tx(config):
    return trainer.make_optimizer(config.optim, _steps(config), EPOCHS)


def _run(frozen, combine, config):
    rng = np.random.default_rng(0)
    d = frozen.config.projection_dim
    prompts = rng.normal(size=(NUM_CLASSES, M, d)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    mask = np.arange(M)[None] < np.array([5, 3, 4, 2])[:, None]
    names = ["red circle", "blue square", "green triangle", "yellow star"]
    class_text = make_class_text(frozen, "a photo of a {}.", names, 1)
    labels = np.arange(N) % NUM_CLASSES
    model = _model(frozen, combine, config.model.aggregator)
    q0 = jnp.zeros((1, d))
    return TrainingRun(
        init_params=lambda key: model.init(key, q0, jnp.asarray(prompts[:1]), jnp.asarray(mask[:1]))["params"],
        make_loss=lambda axis: make_loss_fn(model, frozen.module, LossWeights(), axis_name=axis),
        step_data=StepData(jnp.asarray(prompts), jnp.asarray(mask), class_text,
                           frozen.params if model.config.head.uses_text_tower else None,
                           jnp.asarray(frozen.params["logit_scale"])),
        features=rng.normal(size=(N, K, d)).astype(np.float32), labels=labels, prompt_rows=labels,
    )


def _train(run, config, epochs=2):
    mesh = sharding.make_mesh(config.num_devices or None)
    tx = _tx(config)
    params = run.init_params(jax.random.key(0))
    state = TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params))
    place, step, fetch = trainer.make_step_runner(run, tx, config, mesh)
    state = place(state)
    losses = []
    for epoch in range(epochs):
        for batch in trainer.epoch_batches(run, config, epoch, _steps(config)):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return jax.device_get(fetch(state)), losses


@pytest.mark.parametrize("combine", ["token", "feature"])
def test_eight_devices_equal_one(frozen, combine):
    one, losses1 = _train(_run(frozen, combine, _config(num_devices=1)), _config(num_devices=1))
    eight, losses8 = _train(_run(frozen, combine, _config()), _config())
    assert jax.device_count() == 8
    np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
    chex.assert_trees_all_close(one.params, eight.params, atol=1e-5)
    assert losses1[-1] < losses1[0]


@pytest.mark.parametrize("aggregator", ["attention", "random"])
def test_pmap_equals_jit(frozen, aggregator):
    jit_state, jit_losses = _train(_run(frozen, "token", _config(aggregator=aggregator)), _config(aggregator=aggregator))
    cfg = _config("pmap", aggregator=aggregator)
    pmap_state, pmap_losses = _train(_run(frozen, "token", cfg), cfg)
    np.testing.assert_allclose(jit_losses, pmap_losses, rtol=1e-5)
    chex.assert_trees_all_close(jit_state.params, pmap_state.params, atol=1e-5)
    assert int(pmap_state.step) == int(jit_state.step) == 4


def test_clip_untouched_and_single_trace(frozen):
    config = _config()
    run = _run(frozen, "token", config)
    model = _model(frozen, "token")
    tx = _tx(config)
    before = jax.tree.map(np.array, frozen.params)
    mesh = sharding.make_mesh()
    step = chex.assert_max_traces(
        trainer.make_step(make_loss_fn(model, frozen.module, LossWeights()), tx), n=1)
    rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    jitted = jax.jit(step, in_shardings=(rep, bat, rep, rep), out_shardings=(rep, rep), donate_argnums=0)
    data = run.step_data
    params = run.init_params(jax.random.key(0))
    state = sharding.replicate(TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params)), mesh)
    data = sharding.replicate(data, mesh)
    key = jax.random.key(0)
    for epoch in range(3):
        for batch in trainer.epoch_batches(run, config, epoch, _steps(config)):
            state, _ = jitted(state, sharding.global_batch(batch, mesh), data, key)
    assert int(state.step) == 6
    chex.assert_trees_all_equal(before, jax.tree.map(np.array, frozen.params))
    chex.assert_trees_all_equal(before, jax.tree.map(np.array, jax.device_get(data.clip_params)))


def test_batch_not_divisible_by_devices():
    with pytest.raises(ValueError, match=re.escape("config.batch_size is 12: not divisible by the 8 devices")):
        sharding.check_divisible(12, sharding.make_mesh())


def test_unknown_parallelism(frozen):
    config = _config("vmap")
    with pytest.raises(ValueError, match="parallelism is 'vmap'"):
        trainer.make_step_runner(_run(frozen, "feature", config), _tx(config), config, sharding.make_mesh())
