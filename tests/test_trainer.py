"""The task-independent trainer on a tiny regression: when metrics leave the device, the NaN stop, the
preemption poll and mid-epoch resume, and the one partial restore of a trainable tree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aape_jax import distributed, sharding, trainer
from aape_jax.checkpoint import Checkpointer, ParamsMismatchError, restore_trainable
from aape_jax.configs.trainer import add_training

N, D, BATCH = 40, 4, 8  # 5 steps per epoch


def _config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    add_training(config, optimizer="sgd", learning_rate=0.05, weight_decay=0.0, warmup_lr=0.0, batch_size=BATCH,
                 num_epochs=2, seed=0)
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        (config[parent] if parent else config)[leaf] = value
    return config


def _run(features: np.ndarray | None = None) -> trainer.TrainingRun:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 1, D)).astype(np.float32) if features is None else features
    labels = rng.integers(0, 3, size=N)

    def make_loss(axis_name):
        def loss_fn(params, batch, data, key):
            err = batch["features"] @ params["w"] - batch["labels"].astype(jnp.float32)
            loss = jnp.mean(err**2)
            return loss, {"loss": loss}

        return loss_fn

    return trainer.TrainingRun(init_params=lambda key: {"w": jax.random.normal(key, (D,))}, make_loss=make_loss,
                               step_data=None, features=x, labels=labels, prompt_rows=labels)


def _fetches(monkeypatch) -> list[tuple[int, int]]:
    """Records (last step, steps fetched) of every metrics transfer."""
    seen = []
    real = trainer._add_fetched

    def recording(pending, sums, last_step, epoch):
        seen.append((last_step, len(pending)))
        return real(pending, sums, last_step, epoch)

    monkeypatch.setattr(trainer, "_add_fetched", recording)
    return seen


def test_metrics_leave_the_device_every_log_every_steps_and_at_epoch_ends(tmp_path, monkeypatch):
    seen = _fetches(monkeypatch)
    polls = []
    monkeypatch.setattr(distributed.PreemptionWatcher, "should_stop", lambda self: polls.append(1) or False)
    _, history = trainer.fit(_run(), _config(log_every_steps=3), str(tmp_path), sharding.make_mesh())
    assert seen == [(3, 3), (5, 2), (6, 1), (9, 3), (10, 1)]
    # Polled at the mid-epoch fetches (steps 3, 6, 9) and once after each epoch, not per step.
    assert len(polls) == 3 + 2
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)


def test_nan_loss_stops_naming_its_step_and_the_range_fetched(tmp_path):
    run = _run()
    order = np.random.default_rng([0, 0]).permutation(N)  # epoch 0's order (trainer.epoch_batches)
    run.features[order[2 * BATCH + 1], 0, 0] = np.nan  # a row of step 3's batch
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3 \(epoch 1; metrics of steps 1-4 "):
        trainer.fit(run, _config(log_every_steps=4), str(tmp_path), sharding.make_mesh())


def test_a_stop_at_a_mid_epoch_fetch_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    config = _config(log_every_steps=2, num_epochs=3)
    mesh = sharding.make_mesh()
    want, want_history = trainer.fit(_run(), config, str(tmp_path / "whole"), mesh)

    stop_at = 8  # a mid-epoch fetch of the second epoch (steps 6-10): 3 of its batches done
    state = {"step": 0}
    real = trainer._add_fetched

    def counting(pending, sums, last_step, epoch):
        state["step"] = last_step
        return real(pending, sums, last_step, epoch)

    monkeypatch.setattr(trainer, "_add_fetched", counting)
    monkeypatch.setattr(distributed.PreemptionWatcher, "should_stop", lambda self: state["step"] == stop_at)
    with pytest.raises(distributed.Preempted) as stop:
        trainer.fit(_run(), config, str(tmp_path / "cut"), mesh)
    assert stop.value.step == stop_at
    ckpt = Checkpointer(tmp_path / "cut" / "checkpoints", read_only=True)
    _, _, meta = ckpt.restore_params({"w": np.zeros(D, np.float32)})
    ckpt.close()
    assert meta["epoch_batches"] == 3 and len(meta["history"]) == 1 and "loss" in meta["epoch_sums"]

    monkeypatch.undo()
    got, got_history = trainer.fit(_run(), config, str(tmp_path / "cut"), mesh)
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(want["w"]))
    assert [h["loss"] for h in got_history] == [h["loss"] for h in want_history]


def test_init_restores_only_the_trainable_tree_whatever_the_optimizer(tmp_path):
    mesh = sharding.make_mesh()
    trained, _ = trainer.fit(_run(), _config(**{"optim.name": "adamw"}), str(tmp_path / "adamw"), mesh)
    # An SGD run started from the AdamW run: no optimizer state is read, so the optimizers may differ.
    config = _config(init=str(tmp_path / "adamw"), num_epochs=1)
    tx = trainer.make_optimizer(config.optim, 5, 1)
    ckpt = Checkpointer(tmp_path / "sgd" / "checkpoints")
    state, meta = trainer.initial_state(_run().init_params, tx, config, ckpt)
    ckpt.close()
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.asarray(trained["w"]))
    assert int(state.step) == 0 and meta == {}


def test_a_tree_that_does_not_fit_names_the_directory_step_and_keys(tmp_path):
    trainer.fit(_run(), _config(num_epochs=1), str(tmp_path), sharding.make_mesh())
    with pytest.raises(ParamsMismatchError) as e:
        restore_trainable(tmp_path, {"w": np.zeros(D + 1, np.float32), "bias": np.zeros(1, np.float32)})
    message = str(e.value)
    assert str(tmp_path / "checkpoints") in message and "step 5" in message
    assert "missing ['bias']" in message and "w: (4,) in the checkpoint, (5,) expected" in message


def test_a_checkpoint_keeps_the_meta_as_it_was_when_saved(tmp_path):
    """The trainer appends the next epoch to its history while an asynchronous save may still be writing
    (on a bucket, for seconds): the checkpoint must hold the history of its own step, or a resume skips an
    epoch."""
    ckpt = Checkpointer(tmp_path / "checkpoints")
    meta = {"history": [{"loss": 1.0}]}
    ckpt.save(1, {"w": jnp.ones(3)}, meta)
    meta["history"].append({"loss": 2.0})
    ckpt.wait()
    _, restored = ckpt.restore({"w": jnp.ones(3)})
    ckpt.close()
    assert restored == {"history": [{"loss": 1.0}]}
