"""`train_and_evaluate(config, workdir)`: features -> sharded training -> checkpoints -> evaluation.

Stages (DESIGN §3): (1) the frozen CLIP encodes prompts, templates and images
once into the feature store (K augmented views per training image); (2) the
method's trainable tree (`methods.py`) learns from those features with one
jitted, data-parallel step (pmap as an alternative); (3) evaluation on the
protocol's test sets (base/new, all classes, or transfer targets). Resume
order: this workdir's latest checkpoint > `config.init` > fresh.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from aape_jax import clip as clip_lib
from aape_jax import atomic, config_check, distributed, evaluate, methods, sharding, toyworld
from aape_jax.checkpoint import Checkpointer
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.tiny import write_checkpoint
from aape_jax.data import protocol, synthetic
from aape_jax.data import toyworld as toyworld_data
from aape_jax.data.feature_store import FeatureStore, extract_image_features, fingerprint
from aape_jax.data.text_features import clip_fingerprint
from aape_jax.data.types import Example, ImageDataset
from aape_jax.errors import ConfigError
from aape_jax.prompts import IMAGENET_TEMPLATES, match_classes, read_class_descriptions
from aape_jax.prompts.aliases import aliases_for
from aape_jax.train_step import TrainState, make_step

CONFIG_FILE = config_check.CONFIG_FILE
METRICS_FILE = config_check.METRICS_FILE


# ------------------------------------------------------------------ set-up


def load_clip(config: ml_collections.ConfigDict, workdir: str) -> FrozenCLIP:
    """The configured CLIP: a checkpoint, the toy world's pretrained one ("toyworld"), or a random one
    written into the workdir when `config.clip` is empty."""
    dtype = jnp.dtype(config.clip_dtype)
    if config.clip == toyworld.CLIP_NAME:
        # Pretrained once per machine and cached (aape_jax.toyworld); process 0 first, so that
        # processes sharing a machine do not all pretrain.
        if distributed.is_main_process():
            toyworld.pretrained_clip(config.get("toyworld_tokenizer_dir") or None)
        distributed.barrier("toy-world clip ready")
        return clip_lib.load(toyworld.pretrained_clip(config.get("toyworld_tokenizer_dir") or None), dtype=dtype)
    if config.clip:
        return clip_lib.load(config.clip, dtype=dtype)
    directory = os.path.join(workdir, "random_clip")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        if distributed.is_main_process():
            logging.info("writing a randomly initialised %s CLIP to %s", config.random_clip_geometry, directory)
            write_checkpoint(directory, config.random_clip_geometry, seed=0)
        distributed.barrier("random clip written")
    return clip_lib.load(directory, dtype=dtype)


def load_dataset(config: ml_collections.ConfigDict, name: str | None = None) -> ImageDataset:
    """`config.dataset`'s dataset, or another one (`name`) from the same root and source."""
    d = config.dataset
    name = name or d.name
    if name == "synthetic":
        return synthetic.make_dataset(d.synthetic_classes, d.synthetic_train_per_class, d.synthetic_test_per_class,
                                      seed=0)
    if name in toyworld_data.TASKS:
        return toyworld_data.make_task(name)
    from aape_jax.data.datasets import load_dataset as load_named

    return load_named(name, d.root, source=d.get("source", "coop"))


def dataset_identity(config: ml_collections.ConfigDict, name: str) -> dict:
    """What determines a dataset's images, for feature-store keys (not shots, views or seeds)."""
    d = config.dataset
    if name == "synthetic":
        return {"name": name, "classes": d.synthetic_classes, "train": d.synthetic_train_per_class,
                "test": d.synthetic_test_per_class}
    if name in toyworld_data.TASKS:
        return {"name": name, "world": toyworld_data.task_fingerprint(name)}
    return {"name": name, "root": os.path.abspath(d.root) if d.root else "", "source": d.get("source", "coop")}


def class_prompts(config: ml_collections.ConfigDict, dataset: str, classnames: list[str], workdir: str,
                  path: str = "") -> list[list[str]]:
    """Per-class natural-language prompts from a CuPL-format file, matched to the class names.

    The package's alias table for `dataset` (CuPL spellings) and the config's
    aliases resolve names that normalisation does not.
    """
    if not path:
        if dataset != "synthetic" and dataset not in toyworld_data.TASKS:
            raise ConfigError(f"no prompt file for dataset {dataset!r}: set config.prompts.path "
                             "(or config.prompts.target_paths for transfer targets) to a CuPL-format JSON")
        path = os.path.join(workdir, f"prompts_{dataset}.json")
        if distributed.is_main_process():
            if dataset == "synthetic":
                synthetic.write_class_descriptions(path, classnames)
            else:
                toyworld_data.write_task_descriptions(path, dataset)
        distributed.barrier("prompts written")
    fallback = IMAGENET_TEMPLATES if config.prompts.fallback_to_templates else None
    descriptions = read_class_descriptions(path)
    aliases = {**aliases_for(dataset, available=descriptions), **dict(config.prompts.aliases)}
    result = match_classes(classnames, descriptions, aliases, fallback_templates=fallback, source=path)
    limit = config.prompts.max_per_class
    return [p[:limit] if limit > 0 else p for p in result.prompts]


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


# Images per encoder call during extraction: the progress bar moves once per call. (The features can
# differ from those of another batch size in the last float bits: XLA compiles each padded batch
# shape on its own. The feature-store key does not include it, so existing entries stay in use.)
EXTRACT_BATCH = 32


def image_features(model: FrozenCLIP, store: FeatureStore, examples: list[Example], data_key: dict, *,
                   augment: bool, views: int, seed: int, desc: str) -> np.ndarray:
    """Cached CLIP image features [N, views, D] (normalised later, in the step)."""
    key = {
        "clip": clip_fingerprint(model),
        "transform": dataclasses.asdict(model.transform),
        "data": data_key,
        "examples": [[e.key, e.label] for e in examples],
        "augment": augment, "views": views, "seed": seed,
    }

    def compute(rows: slice) -> dict[str, np.ndarray]:
        z = extract_image_features(model.encode_image, examples, model.transform, views=views, seed=seed,
                                   augment=augment, batch_size=min(model.max_batch, EXTRACT_BATCH), desc=desc,
                                   rows=rows)
        return {"z": z}

    return store.get_or_compute_sharded("images", key, len(examples), compute)["z"]


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------ training


@dataclasses.dataclass
class Run:
    """What the training loop needs, assembled once.

    `init_params(key)` gives a fresh trainable tree; `make_step(axis_name)`
    builds the pure train step (`axis_name` is the pmap axis, or None under
    jit). Methods and tasks differ only there and in `step_data`.
    """

    clip: FrozenCLIP
    tx: optax.GradientTransformation
    init_params: Callable[[jax.Array], Any]
    make_step: Callable[[str | None], Callable]
    step_data: Any
    features: np.ndarray  # [N, K, D]
    labels: np.ndarray  # [N]
    prompt_rows: np.ndarray  # [N]
    steps_per_epoch: int


def epoch_batches(run: Run, config: ml_collections.ConfigDict, epoch: int) -> list[dict[str, np.ndarray]]:
    """The epoch's batches: a permutation and a view per image, from (seed, epoch) only."""
    rng = np.random.default_rng([config.seed, epoch])
    n, k = run.features.shape[:2]
    order = rng.permutation(n)
    views = rng.integers(0, k, size=n)
    batches = []
    for b in range(run.steps_per_epoch):
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]  # drop_last, as Dassl
        batches.append({
            "features": run.features[idx, views[idx]],
            "labels": run.labels[idx].astype(np.int32),
            "prompt_rows": run.prompt_rows[idx].astype(np.int32),
            "index": (epoch * n + np.arange(b * config.batch_size, (b + 1) * config.batch_size)).astype(np.int32),
        })
    return batches


def make_step_runner(run: Run, config: ml_collections.ConfigDict, mesh) -> tuple[Callable, Callable, Callable]:
    """Returns (place_state, step, fetch_state) for the configured parallelism.

    jit: NamedSharding, batch on `data`, everything else replicated, the state
    donated. pmap: the same step under `jax.pmap` with gradient `pmean`.
    """
    base_key = jax.random.PRNGKey(config.seed)  # raw uint32 key: it replicates through host memory
    if config.parallelism == "jit":
        step = run.make_step(None)
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
        step = run.make_step(sharding.DATA_AXIS)
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


def initial_state(run: Run, config: ml_collections.ConfigDict, ckpt: Checkpointer | None) -> tuple[TrainState, dict]:
    """Resume from this workdir (`ckpt`, if any) > initialise from `config.init` > fresh."""
    params = run.init_params(jax.random.key(config.seed))
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=run.tx.init(params))
    if ckpt is not None and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        logging.info("resuming from step %d in %s", int(state.step), ckpt.directory)
        return state, meta
    if config.init:
        init_ckpt = Checkpointer(os.path.join(config.init, "checkpoints"), async_save=False)
        restored, _ = init_ckpt.restore(state)
        init_ckpt.close()
        logging.info("initialised the trainable tree from %s", config.init)
        return dataclasses.replace(state, params=restored.params), {}
    return state, {}


def _resume_point(meta: dict, start_step: int, steps_per_epoch: int) -> tuple[int, int, dict]:
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


def fit(run: Run, config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[Any, list[dict]]:
    """The epoch loop: checkpoints every `checkpoint_every_epochs`, and at a preemption request.

    Returns the trained tree and the per-epoch history. A checkpoint taken
    mid-epoch (SIGTERM, or a first Ctrl-C) stores the running sums of the
    epoch's metrics, and resuming skips the batches already done, so the
    result equals an uninterrupted run. Checkpoint steps count optimizer steps.
    """
    steps_per_epoch = run.steps_per_epoch
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint_keep)
    state, meta = initial_state(run, config, ckpt)
    history: list[dict] = list(meta.get("history", []))
    step_no = int(state.step)
    start_epoch, skip, resumed_sums = _resume_point(meta, step_no, steps_per_epoch)
    place, step_fn, fetch = make_step_runner(run, config, mesh)
    state = place(state)
    writer = _summary_writer(workdir)

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
                t0 = time.time()
                for b, batch in enumerate(epoch_batches(run, config, epoch)):
                    if b < first:
                        continue
                    state, metrics = step_fn(state, batch)
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    step_no += 1
                    if not math.isfinite(metrics["loss"]):
                        raise FloatingPointError(
                            f"training loss is {metrics['loss']} at step {step_no} (epoch {epoch + 1}); "
                            f"metrics: {metrics}"
                        )
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if b + 1 < steps_per_epoch and watcher.should_stop():
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


def untrained_params(learner: methods.Learner, config: ml_collections.ConfigDict, workdir: str
                     ) -> tuple[Any, list[dict]]:
    """`config.num_epochs == 0` (evaluate only): the tree and history of this workdir's checkpoint, else
    of `config.init`, else the freshly initialised tree; no training images are encoded."""
    tx = make_optimizer(config.optim, 1, 1)  # only the structure of its state matters (for a restore)
    run = Run(clip=None, tx=tx, init_params=learner.init_params, make_step=None, step_data=None, features=None,
              labels=None, prompt_rows=None, steps_per_epoch=1)
    directory = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(directory, read_only=True) if config_check.latest_checkpoint_step(workdir) is not None \
        else None
    try:
        state, meta = initial_state(run, config, ckpt)
    finally:
        if ckpt is not None:
            ckpt.close()
    if ckpt is None and not config.init:
        logging.info("num_epochs is 0: evaluating the untrained %s tree", learner.name)
    return state.params, list(meta.get("history", []))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the whole pipeline for `config.method`; returns (and writes) the metrics dict.

    Before any work the config is validated (`config_check.validate`) and
    compared with the one this workdir's checkpoints and metrics were made with
    (`config_check.resume_record`); only then is `config.json` written.
    `num_epochs == 0` evaluates without training (see `untrained_params`).
    """
    workdir = os.path.abspath(workdir)
    config_check.validate(config)
    drift: ConfigError | None = None
    try:
        record = config_check.resume_record(config, workdir, git_revision())
    except ConfigError as e:
        drift = e
    if distributed.any_process(drift is not None):  # every process stops, even where the workdir looked fine
        raise drift or ConfigError(f"another process found that {workdir} was made with a different config")
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main_process():
        atomic.write_json(os.path.join(workdir, CONFIG_FILE), record)
    mesh = sharding.make_mesh(config.num_devices or None)
    sharding.check_divisible(config.batch_size, mesh)
    store = FeatureStore(config.feature_store or os.path.join(workdir, "feature_store"))

    # Stage 1: the frozen CLIP, once, into the store.
    model_clip = load_clip(config, workdir)
    dataset = load_dataset(config)
    train_classes, evaluations = protocol_splits(config, dataset)
    train_names = [dataset.classnames[i] for i in train_classes]
    prompts_by_name: dict[str, list[str]] = {}

    def prompts_of(names):
        missing = [n for n in names if n not in prompts_by_name]
        if missing:
            prompts_by_name.update(zip(dataset.classnames, class_prompts(
                config, dataset.name, dataset.classnames, workdir, config.prompts.path)))
            for target, target_path in dict(config.prompts.get("target_paths", {})).items():
                target_names = load_dataset(config, target).classnames
                prompts_by_name.update(zip(target_names, class_prompts(config, target, target_names, workdir,
                                                                       target_path)))
        unknown = [n for n in names if n not in prompts_by_name]
        if unknown:
            raise ConfigError(f"no prompts for classes {unknown}: add their dataset to config.prompts.target_paths")
        return [prompts_by_name[n] for n in names]

    learner = methods.build(config, model_clip, store, train_names, prompts_of)

    # Stage 2: training (methods that learn).
    params, history = None, []
    if learner.init_params is not None and config.num_epochs == 0:
        params, history = untrained_params(learner, config, workdir)
    elif learner.init_params is not None:
        # The draw is cached as JSON, as CoOp does, so every method and rerun trains on the same images.
        draw = {"dataset": config.dataset.to_dict(), "protocol": config.get("protocol", "base2new")}
        fewshot_file = (store.root / "fewshot" /
                        f"{dataset.name}_shot{config.dataset.shots}_seed{config.seed}_{fingerprint(draw)[:12]}.json")
        train = protocol.few_shot_cached(protocol.subsample(dataset.train, train_classes), config.dataset.shots,
                                         config.seed, fewshot_file)
        if len(train) < config.batch_size:
            raise ConfigError(f"config.batch_size is {config.batch_size}, more than the {len(train)} training "
                              f"images ({config.dataset.shots} shots of {len(train_classes)} classes)",
                              hint="lower --config.batch_size (it must stay divisible by the device count)")
        train_z = image_features(model_clip, store, train, dataset_identity(config, dataset.name), augment=True,
                                 views=config.dataset.num_views, seed=config.seed, desc="train image features")
        labels = np.array([e.label for e in train])
        steps_per_epoch = len(train) // config.batch_size
        tx = make_optimizer(config.optim, steps_per_epoch, config.num_epochs)
        run = Run(
            clip=model_clip, tx=tx, init_params=learner.init_params,
            make_step=lambda axis: make_step(learner.make_loss(axis), tx, axis),
            step_data=learner.step_data, features=train_z, labels=labels, prompt_rows=labels,
            steps_per_epoch=steps_per_epoch,
        )
        params, history = fit(run, config, workdir, mesh)

    # Stage 3: evaluation on each (test set, candidate classes) of the protocol.
    metrics: dict[str, Any] = {"method": learner.name, "protocol": config.get("protocol", "base2new"),
                               **evaluate_protocol(config, learner, params, model_clip, store, evaluations, mesh)}
    if config.get("report_zeroshot", False) and learner.name != "zeroshot_clip":
        # Zero-shot CLIP with the same template on the same images: the reference every method must beat.
        zeroshot = methods.build(_zeroshot_config(config), model_clip, store, train_names, prompts_of)
        reference = evaluate_protocol(config, zeroshot, None, model_clip, store, evaluations, mesh)
        metrics["zeroshot"] = {k: v for k, v in reference.items() if isinstance(v, float)}  # not per class
    metrics.update(
        train_loss=history[-1]["loss"] if history else None, history=history, num_devices=int(mesh.size),
        random_weights=not config.clip,
    )
    if record["history"]:  # config.resume_with_changes: what changed, and from which step on
        metrics["config_changes"] = record["history"]
    writer = _summary_writer(workdir)
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, float) and k != "train_loss":
                writer.add_scalar(f"eval/{k}", v, config.num_epochs)
        writer.close()
    if distributed.is_main_process():
        atomic.write_json(os.path.join(workdir, METRICS_FILE), metrics)
    logging.info("%s: %s", learner.name, {k: round(v, 2) for k, v in metrics.items() if isinstance(v, float)})
    return metrics


def evaluate_protocol(config: ml_collections.ConfigDict, learner: methods.Learner, params: Any, model_clip: FrozenCLIP,
                      store: FeatureStore, evaluations: list[tuple[str, ImageDataset, list[int]]], mesh
                      ) -> dict[str, Any]:
    """`<split>_acc` and `<split>_per_class_acc` of every evaluation, plus H (base2new) or the target mean
    (transfer), on `config.evaluate_split` ("test", or "val" for hyper-parameter selection)."""
    eval_split = config.get("evaluate_split", "test")
    clip_params = model_clip.params if learner.uses_clip_text else None
    metrics: dict[str, Any] = {}
    for split, test_set, classes in evaluations:
        names = [test_set.classnames[i] for i in classes]
        test = protocol.subsample(getattr(test_set, eval_split), classes)
        if not test:
            raise ConfigError(f"{test_set.name} has no {eval_split} images for its {split} classes "
                             "(config.evaluate_split)")
        z = image_features(model_clip, store, test, dataset_identity(config, test_set.name), augment=False, views=1,
                           seed=0, desc=f"{split} {eval_split} features")[:, 0]
        pred = evaluate.logits(learner.logits_fn, params, z, learner.class_text(names), clip_params,
                               model_clip.params["logit_scale"], mesh, config.eval_batch_size).argmax(-1)
        truth = [e.label for e in test]
        metrics[f"{split}_acc"] = protocol.accuracy(pred, truth)
        metrics[f"{split}_per_class_acc"] = protocol.per_class_accuracy(pred, truth, len(names)).tolist()
    if "base_acc" in metrics and "new_acc" in metrics:
        metrics["harmonic_mean"] = protocol.harmonic_mean(metrics["base_acc"], metrics["new_acc"])
    targets = [split for split, _, _ in evaluations[1:]]
    if config.get("protocol", "base2new") == "transfer" and targets:
        metrics["target_mean_acc"] = float(np.mean([metrics[f"{t}_acc"] for t in targets]))
    return metrics


def _zeroshot_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with method zero-shot CLIP (single template: `config.model.template`)."""
    reference = ml_collections.ConfigDict(config.to_dict())
    reference.method = "zeroshot_clip"
    reference.baseline.templates = "single"
    return reference


def protocol_splits(config: ml_collections.ConfigDict, dataset: ImageDataset
                    ) -> tuple[list[int], list[tuple[str, ImageDataset, list[int]]]]:
    """Training classes and the evaluations `(name, dataset, candidate classes)` of `config.protocol`.

    base2new: train on the first half of the classes (CoCoOp rounding); test
    base and new separately. fewshot: train and test on all classes.
    transfer: train on all classes of the source; test on the source and on
    each of `config.transfer_targets` (domain generalisation: ImageNet ->
    V2/Sketch/A/R, with -A/-R on their 200 classes; cross-dataset: ImageNet
    -> the other ten).
    """
    name = config.get("protocol", "base2new")
    everything = list(range(len(dataset.classnames)))
    if name == "base2new":
        base, new = protocol.base_new_split(len(dataset.classnames))
        return base, [("base", dataset, base), ("new", dataset, new)]
    if name == "fewshot":
        return everything, [("all", dataset, everything)]
    if name == "transfer":
        from aape_jax.data.classnames import imagenet_subset

        evaluations = [(dataset.name, dataset, everything)]
        for target in config.transfer_targets:
            target_set = load_dataset(config, target)
            classes = (imagenet_subset(target) if target in ("imagenet_a", "imagenet_r")
                       else list(range(len(target_set.classnames))))
            evaluations.append((target, target_set, classes))
        return everything, evaluations
    raise ConfigError(f"config.protocol is {name!r}; choose 'base2new', 'fewshot' or 'transfer'")


def _summary_writer(workdir: str):
    if not distributed.is_main_process():
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(workdir, "tensorboard"))
