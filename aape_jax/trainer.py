"""The task-independent trainer: workdir set-up, optimizer, step runner, epoch loop, checkpoints, metrics.

A task (classification `aape_jax/train.py`, retrieval `aape_jax/retrieval/train.py`,
captioning and VQA `aape_jax/captioning/`) starts with `start_run` and describes what to train as a `TrainingRun` (its loss, its trainable tree's
initialiser, the data every step shares, precomputed features) and calls
`fit`; everything else here is shared:

* `prepare_workdir`: the config is validated and compared with the one the
  workdir's checkpoints were made with (`aape_jax.config_check`), then
  `config.json` is written.
* `make_step` / `make_step_runner`: one jitted, data-parallel step (NamedSharding,
  the state donated), or `jax.pmap` with `pmean`ed gradients.
* `fit`: resume order this workdir's latest checkpoint > `config.init` (the
  trainable tree only) > fresh; metrics fetched from the device every
  `config.log_every_steps` steps and at epoch ends (NaN stop, preemption poll);
  checkpoints every `config.checkpoint_every_epochs` and at a stop request.
* `write_metrics`: TensorBoard scalars and `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from aape_jax import atomic, config_check, distributed, sharding, storage
from aape_jax.checkpoint import Checkpointer, restore_trainable
from aape_jax.errors import ConfigError

Batch = dict[str, jax.Array]  # features [B, D], labels [B], prompt_rows [B], index [B]
LossFn = Callable[[Any, Batch, Any, jax.Array], tuple[jax.Array, dict]]  # (params, batch, data, key)


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds to resume training (never CLIP).

    Attributes:
      step: optimizer steps taken.
      params: the trainable tree.
      opt_state: optax state.
    """

    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass
class TrainingRun:
    """What a task trains, assembled once.

    Attributes:
      init_params: key -> a fresh trainable tree.
      make_loss: pmap axis name (None under jit) -> `loss_fn(params, batch, data, key) -> (loss, parts)`;
        `parts["loss"]` is the total.
      step_data: the pytree every step receives as `data` (replicated).
      features: training image features [N, K, D] (K augmented views).
      labels: [N], the batch's `labels`.
      prompt_rows: [N], each image's row of the prompt table, the batch's `prompt_rows`.
    """

    init_params: Callable[[jax.Array], Any]
    make_loss: Callable[[str | None], LossFn]
    step_data: Any
    features: np.ndarray
    labels: np.ndarray
    prompt_rows: np.ndarray


# ------------------------------------------------------------------ set-up


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates `config`, compares it with the workdir's record and writes `config.json`; returns the record.

    Every process stops when any finds the workdir made with another config
    (`config_check.resume_record`), so that none waits for the others.

    Raises:
      StorageError: the workdir (a local folder or ``gs://``) cannot be written.
      ConfigError: a bad config value, or a workdir made with another config.
    """
    config_check.validate(config)
    storage.check_writable(workdir, "--workdir")
    drift: ConfigError | None = None
    try:
        record = config_check.resume_record(config, workdir, git_revision())
    except ConfigError as e:
        drift = e
    if distributed.any_process(drift is not None):
        raise drift or ConfigError(f"another process found that {workdir} was made with a different config")
    if distributed.is_main_process():
        atomic.write_json(os.path.join(workdir, config_check.CONFIG_FILE), record)
    return record


def start_run(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, dict, Any]:
    """Every task's first step, before any slow work: the absolute workdir, its record
    (`prepare_workdir`), a writable `config.feature_store`, and the device mesh the batch size divides.

    Returns:
      (workdir, record, mesh).
    """
    workdir = storage.absolute(workdir)
    record = prepare_workdir(config, workdir)
    if config.feature_store:
        storage.check_writable(config.feature_store, "config.feature_store")
    mesh = sharding.make_mesh(config.num_devices or None)
    sharding.check_divisible(config.batch_size, mesh)
    return workdir, record, mesh


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int) -> optax.GradientTransformation:
    """SGD or AdamW with linear warmup + cosine decay, weight decay and global-norm clipping."""
    total = max(1, steps_per_epoch * num_epochs)
    warmup = min(total - 1, steps_per_epoch * optim.warmup_epochs)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=optim.warmup_lr, peak_value=optim.learning_rate, warmup_steps=warmup, decay_steps=total,
        end_value=0.0,
    )
    if optim.name == "sgd":
        core = optax.chain(optax.add_decayed_weights(optim.weight_decay),
                           optax.sgd(schedule, momentum=optim.momentum or None))
    elif optim.name == "adamw":
        core = optax.adamw(schedule, weight_decay=optim.weight_decay)
    else:
        raise ConfigError(f"config.optim.name is {optim.name!r}; choose 'sgd' or 'adamw'")
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), core) if optim.grad_clip > 0 else core


# ------------------------------------------------------------------ the step


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, axis_name: str | None = None) -> Callable:
    """Any `loss_fn(params, batch, data, key) -> (loss, parts)` -> the pure
    `train_step(state, batch, data, base_key) -> (state, metrics)`.

    The step's randomness is `fold_in(base_key, step)`; losses draw per example
    with `fold_in(., global index)`, so results do not depend on the device
    count. Under pmap (`axis_name`), gradients and metrics are averaged.
    """

    def train_step(state: TrainState, batch: Batch, data: Any, base_key: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        grads, parts = jax.grad(loss_fn, has_aux=True)(state.params, batch, data, key)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            parts = jax.lax.pmean(parts, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(parts, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_step_runner(run: TrainingRun, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                     mesh) -> tuple[Callable, Callable, Callable]:
    """Returns (place_state, step, fetch_state) for the configured parallelism.

    jit: NamedSharding, batch on `data`, everything else replicated, the state
    donated. pmap: the same step under `jax.pmap` with gradient `pmean`.
    """
    base_key = jax.random.PRNGKey(config.seed)  # raw uint32 key: it replicates through host memory
    if config.parallelism == "jit":
        step = make_step(run.make_loss(None), tx)
        rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        jitted = jax.jit(step, in_shardings=(rep, batch, rep, rep), out_shardings=(rep, rep), donate_argnums=0)
        data = sharding.replicate(run.step_data, mesh)
        key = sharding.replicate(base_key, mesh)
        return (lambda s: sharding.replicate(s, mesh),
                lambda s, b: jitted(s, sharding.global_batch(b, mesh), data, key),
                lambda s: s)
    if config.parallelism == "pmap":
        if jax.process_count() > 1:
            raise ConfigError("config.parallelism='pmap' runs on one process; use 'jit' for multi-host runs")
        devices = list(mesh.devices.flat)
        n = len(devices)
        step = make_step(run.make_loss(sharding.DATA_AXIS), tx, sharding.DATA_AXIS)
        pmapped = jax.pmap(step, axis_name=sharding.DATA_AXIS, in_axes=(0, 0, None, None), donate_argnums=0,
                           devices=devices)
        split = lambda b: {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in b.items()}

        def run_step(s, b):
            s, metrics = pmapped(s, split(b), run.step_data, base_key)
            return s, jax.tree.map(lambda x: x[0], metrics)

        stack = lambda s: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), s)  # [n, ...] per leaf
        return (stack, run_step,
                lambda s: jax.tree.map(lambda x: x[0], s))
    raise ConfigError(f"config.parallelism is {config.parallelism!r}; choose 'jit' or 'pmap'")


# ------------------------------------------------------------------ the loop


def epoch_batches(run: TrainingRun, config: ml_collections.ConfigDict, epoch: int,
                  steps_per_epoch: int) -> list[dict[str, np.ndarray]]:
    """The epoch's batches: a permutation and a view per image, from (seed, epoch) only."""
    rng = np.random.default_rng([config.seed, epoch])
    n, k = run.features.shape[:2]
    order = rng.permutation(n)
    views = rng.integers(0, k, size=n)
    batches = []
    for b in range(steps_per_epoch):
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]  # drop_last, as Dassl
        batches.append({
            "features": run.features[idx, views[idx]],
            "labels": run.labels[idx].astype(np.int32),
            "prompt_rows": run.prompt_rows[idx].astype(np.int32),
            "index": (epoch * n + np.arange(b * config.batch_size, (b + 1) * config.batch_size)).astype(np.int32),
        })
    return batches


def initial_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  config: ml_collections.ConfigDict, ckpt: Checkpointer) -> tuple[TrainState, dict]:
    """Resume from this workdir (`ckpt`) > the trainable tree of `config.init` > fresh."""
    params = init_params(jax.random.key(config.seed))
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params))
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        logging.info("resuming from step %d in %s", int(state.step), ckpt.directory)
        return state, meta
    if config.init:
        params, _ = restore_trainable(config.init, params)
        logging.info("initialised the trainable tree from %s", config.init)
        return dataclasses.replace(state, params=params), {}
    return state, {}


def resume_point(meta: dict, start_step: int, steps_per_epoch: int) -> tuple[int, int, dict]:
    """(epoch, batches of it already done, their running sums) to continue from, after `meta`'s checkpoint.

    The epoch is the number of epochs in the checkpoint's history. A
    mid-epoch checkpoint (preemption) records how many of that epoch's batches
    were done; when the epoch length changed since (`batch_size` under
    `config.resume_with_changes`), that partial epoch is redone from its start.
    """
    epoch = len(meta.get("history", []))
    done = meta.get("epoch_batches")
    if done is None:  # checkpoints written before `epoch_batches` was recorded
        done = start_step - epoch * steps_per_epoch
    if meta.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch or not 0 <= done < steps_per_epoch:
        if done:
            logging.warning("the checkpoint at step %d is %d batches into epoch %d of another epoch length; "
                            "that epoch restarts from its first batch", start_step, done, epoch + 1)
        done = 0
    return epoch, done, dict(meta.get("epoch_sums", {})) if done else {}


def _add_fetched(pending: list[dict], sums: dict[str, float], last_step: int, epoch: int) -> None:
    """Adds the steps' device metrics (fetched in one transfer) to `sums`, in step order; a non-finite
    loss stops training, naming its step and the range fetched."""
    fetched = jax.device_get(pending)
    first_step = last_step - len(pending) + 1
    for i, metrics in enumerate(fetched):
        metrics = {k: float(v) for k, v in metrics.items()}
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"training loss is {metrics['loss']} at step {first_step + i} (epoch {epoch + 1}; metrics of "
                f"steps {first_step}-{last_step} fetched together); metrics: {metrics}")
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v


def fit(run: TrainingRun, config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[Any, list[dict]]:
    """The epoch loop: checkpoints every `checkpoint_every_epochs`, and at a stop request.

    Returns the trained tree and the per-epoch history. Metrics stay on the
    device until every `log_every_steps`-th step and each epoch's end; there the
    loss is checked for NaN and the stop request (SIGTERM, a first Ctrl-C) is
    polled, agreed across processes only at those points. A checkpoint taken
    mid-epoch stores the running sums of the epoch's metrics, and resuming
    skips the batches already done, so the result equals an uninterrupted run.
    Checkpoint steps count optimizer steps.
    """
    steps_per_epoch = len(run.features) // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"config.batch_size is {config.batch_size}, more than the {len(run.features)} "
                          "training images", hint="lower --config.batch_size (it must stay divisible by the "
                                                  "device count)")
    tx = make_optimizer(config.optim, steps_per_epoch, config.num_epochs)
    log_every = max(1, int(config.log_every_steps))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint_keep)
    state, meta = initial_state(run.init_params, tx, config, ckpt)
    history: list[dict] = list(meta.get("history", []))
    step_no = int(state.step)
    start_epoch, skip, resumed_sums = resume_point(meta, step_no, steps_per_epoch)
    place, step_fn, fetch = make_step_runner(run, tx, config, mesh)
    state = place(state)
    writer = summary_writer(workdir)

    def meta_now(done: int = 0, sums: dict | None = None) -> dict:
        out = {"history": history, "epoch_batches": done, "steps_per_epoch": steps_per_epoch}
        return {**out, "epoch_sums": sums} if done else out

    def stop_preempted(watcher: distributed.PreemptionWatcher, step_no: int, meta: dict | None):
        if meta is not None:
            ckpt.save(step_no, fetch(state), meta)
        ckpt.wait()
        logging.warning("%s: saved step %d in %s; rerun the same command to resume", watcher.reason, step_no,
                        ckpt.directory)
        raise distributed.Preempted(step_no, watcher.exit_code)

    try:
        with distributed.PreemptionWatcher() as watcher:
            for epoch in tqdm(range(start_epoch, config.num_epochs), desc="epochs",
                              initial=min(start_epoch, config.num_epochs), total=config.num_epochs,
                              disable=not distributed.is_main_process()):
                first = skip if epoch == start_epoch else 0
                sums: dict[str, float] = dict(resumed_sums) if first else {}
                pending: list[dict] = []
                t0 = time.time()
                for b, batch in enumerate(epoch_batches(run, config, epoch, steps_per_epoch)):
                    if b < first:
                        continue
                    state, metrics = step_fn(state, batch)
                    pending.append(metrics)
                    step_no += 1
                    if step_no % log_every and b + 1 < steps_per_epoch:
                        continue
                    _add_fetched(pending, sums, step_no, epoch)
                    pending = []
                    if b + 1 < steps_per_epoch:
                        logging.info("step %d: loss %.4f (epoch %d, running mean)", step_no,
                                     sums["loss"] / (b + 1), epoch + 1)
                        if watcher.should_stop():
                            stop_preempted(watcher, step_no, meta_now(b + 1, sums))
                record = {k: v / steps_per_epoch for k, v in sums.items()}
                record.update(epoch=epoch + 1, seconds=time.time() - t0)
                history.append(record)
                logging.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
                if writer is not None:
                    for k, v in record.items():
                        writer.add_scalar(f"train/{k}", v, epoch + 1)
                last = epoch + 1 == config.num_epochs
                if not last and watcher.should_stop():
                    stop_preempted(watcher, step_no, meta_now())
                if (epoch + 1) % config.checkpoint_every_epochs == 0 or last:
                    ckpt.save(step_no, fetch(state), meta_now())
                if last and watcher.should_stop():  # asked during the last epoch: its checkpoint is the final one
                    stop_preempted(watcher, step_no, None)
    finally:
        # Also on a NaN stop or preemption: pending checkpoint writes finish, summaries are flushed.
        ckpt.close()
        if writer is not None:
            writer.close()
    return fetch(state).params, history


def evaluation_params(init_params: Callable[[jax.Array], Any], config: ml_collections.ConfigDict,
                      workdir: str) -> tuple[Any, list[dict]]:
    """`config.num_epochs == 0` (evaluate only): the trainable tree and history of this workdir's
    checkpoint, else the tree of `config.init`, else the freshly initialised tree."""
    params = init_params(jax.random.key(config.seed))
    if config_check.latest_checkpoint_step(workdir) is not None:
        params, meta = restore_trainable(workdir, params)
        return params, list(meta.get("history", []))
    if config.init:
        params, _ = restore_trainable(config.init, params)
        logging.info("evaluating the trainable tree of %s", config.init)
        return params, []
    logging.info("num_epochs is 0: evaluating the untrained tree")
    return params, []


# ------------------------------------------------------------------ results


def summary_writer(workdir: str):
    """TensorBoard writer under WORKDIR/tensorboard on process 0 (None elsewhere)."""
    if not distributed.is_main_process():
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def write_metrics(workdir: str, metrics: dict[str, Any], scalars: dict[str, float], step: int) -> None:
    """`scalars` as `eval/<key>` TensorBoard summaries at `step`, and `metrics` as WORKDIR/metrics.json
    (process 0, atomically)."""
    writer = summary_writer(workdir)
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(f"eval/{k}", v, step)
        writer.close()
    if distributed.is_main_process():
        atomic.write_json(os.path.join(workdir, config_check.METRICS_FILE), metrics)
