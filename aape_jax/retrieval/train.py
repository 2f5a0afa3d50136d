"""`train_and_evaluate(config, workdir)` for image-text retrieval: captions -> AAPE -> Recall@K.

Stages, as in `aape_jax.train` (whose loop, checkpoints, preemption handling,
NaN stop, history and TensorBoard summaries this reuses through `fit`):
(1) the frozen CLIP encodes every caption once into the text-embedding store
    (one padded row of captions per image) and every image (K augmented views
    per training image, one view for test);
(2) the aggregator summarises each training image's captions (CLIP reward),
    the generator learns that summary from the image, and the retrieval
    embedding e(x) = n(q + gamma n(a)) is trained contrastively against the
    image's captions (`aape_jax.retrieval.train_step`);
(3) each evaluation set is scored image->text and text->image (R@1/5/10) with
    the AAPE embedding and, in the same harness, with zero-shot CLIP (e = q).

`num_epochs = 0` with `init` evaluates a trained workdir without training
(zero-shot transfer of a COCO-trained generator to Flickr30k).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from aape_jax import atomic, distributed, sharding
from aape_jax.checkpoint import Checkpointer
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data import captions as captions_lib
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.synthetic_captions import make_captioned_dataset
from aape_jax.data.text_features import prompt_table
from aape_jax.models.aape import AAPEConfig
from aape_jax.retrieval import metrics as metrics_lib
from aape_jax.retrieval.train_step import SCORES, RetrievalAAPE, RetrievalData, make_embed_fn, make_train_step
from aape_jax.train import (CONFIG_FILE, METRICS_FILE, Run, _summary_writer, fit, git_revision, image_features,
                            load_clip, make_optimizer)
from aape_jax.train_step import LossWeights, TrainState

DATASETS = ("synthetic", "coco", "flickr30k")


# ------------------------------------------------------------------ data


@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, source: str, root: str, annotations: str, tfds_data_dir: str, check_files: bool,
                  synthetic_train: int, synthetic_test: int, split: str) -> tuple[captions_lib.CaptionedImage, ...]:
    if name == "synthetic":
        ds = make_captioned_dataset(synthetic_train, synthetic_test, seed=0)
        return tuple(ds.split(split))
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not available; choose one of {DATASETS}")
    if source == "tfds":
        if name != "coco":
            raise ValueError(f"dataset.source='tfds' exists only for 'coco' (TFDS has no {name} builder); "
                             "use source='karpathy'")
        image_dir = os.path.join(root, "tfds_images") if root else None
        return tuple(captions_lib.load_tfds_coco_captions(split, data_dir=tfds_data_dir or None, image_dir=image_dir))
    if source != "karpathy":
        raise ValueError(f"dataset.source is {source!r}; choose 'karpathy' or 'tfds'")
    if not root:
        raise ValueError(f"dataset.root is empty: give the {name} image folder")
    path = annotations or os.path.join(root, f"dataset_{name}.json")
    return tuple(captions_lib.read_karpathy(path, root, check_files=check_files, name=name).split(split))


def load_captioned(spec: ml_collections.ConfigDict) -> list[captions_lib.CaptionedImage]:
    """The captioned images of one data spec (`config.dataset` or an entry of `config.eval`)."""
    images = _load_dataset(spec.name, spec.get("source", "karpathy"), spec.get("root", ""),
                           spec.get("annotations", ""), spec.get("tfds_data_dir", ""),
                           bool(spec.get("check_files", True)), int(spec.get("synthetic_train", 0)),
                           int(spec.get("synthetic_test", 0)), spec.split)
    if not images:
        raise ValueError(f"{spec.name} split {spec.split!r} holds no images")
    return captions_lib.limit_captions(images, int(spec.get("max_captions", 0)))


def _data_key(spec: ml_collections.ConfigDict) -> dict:
    return {"captioned": spec.to_dict()}


def caption_embeddings(model_clip: FrozenCLIP, store: FeatureStore,
                       images: list[captions_lib.CaptionedImage]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised caption table [N, M, D] and mask [N, M] (cached; one row per image)."""
    return prompt_table(model_clip, store, [list(im.captions) for im in images], [im.key for im in images])


# ------------------------------------------------------------------ model


def retrieval_model(config: ml_collections.ConfigDict, model_clip: FrozenCLIP) -> RetrievalAAPE:
    m = config.model
    if m.score not in SCORES:
        raise ValueError(f"config.model.score is {m.score!r}; choose one of {SCORES}")
    aape_cfg = AAPEConfig(embed_dim=model_clip.config.projection_dim, token_width=model_clip.config.text.hidden_size,
                          combine="feature", aggregator=m.aggregator, num_heads=m.num_heads,
                          aggregator_hidden=m.aggregator_hidden, generator_hidden=m.generator_hidden)
    return RetrievalAAPE(aape_cfg, score=m.score, alpha=float(m.alpha))


def _init_params(model: RetrievalAAPE, dim: int, key: jax.Array) -> Any:
    """A fresh trainable tree (aggregator, generator, gate); parameter shapes do not depend on M."""
    return model.init(key, jnp.zeros((1, dim)), jnp.zeros((1, 1, dim)), jnp.ones((1, 1), bool))["params"]


def _restore_params(model: RetrievalAAPE, config: ml_collections.ConfigDict, dim: int) -> Any:
    """The trainable tree of `config.init`'s latest checkpoint (evaluation without training)."""
    if not config.init:
        raise ValueError("config.num_epochs is 0: give config.init (a trained workdir) to evaluate")
    tx = make_optimizer(config.optim, 1, 1)
    params = _init_params(model, dim, jax.random.key(config.seed))
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params))
    ckpt = Checkpointer(os.path.join(config.init, "checkpoints"), async_save=False)
    restored, _ = ckpt.restore(state)
    ckpt.close()
    logging.info("evaluating the trainable tree of %s", config.init)
    return restored.params


# ------------------------------------------------------------------ evaluation


def embed_images(model: RetrievalAAPE, params: Any, features: np.ndarray, mesh, batch_size: int) -> np.ndarray:
    """AAPE retrieval embeddings np.float32 [N, D] of image features [N, D], in padded sharded batches."""
    rep, shard = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    fn = jax.jit(make_embed_fn(model), in_shardings=(rep, shard), out_shardings=rep)
    batch_size = -(-batch_size // mesh.size) * mesh.size
    params = sharding.replicate(params, mesh)
    out = []
    for start in range(0, len(features), batch_size):
        chunk = np.asarray(features[start : start + batch_size], np.float32)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        out.append(np.asarray(fn(params, sharding.global_batch({"z": padded}, mesh)["z"]))[: len(chunk)])
    return np.concatenate(out)


def evaluate_set(model: RetrievalAAPE, params: Any, model_clip: FrozenCLIP, store: FeatureStore,
                 images: list[captions_lib.CaptionedImage], spec: ml_collections.ConfigDict,
                 config: ml_collections.ConfigDict, mesh, desc: str) -> dict[str, float]:
    """R@1/5/10 both ways for AAPE and (keys prefixed `zeroshot_`) zero-shot CLIP on one evaluation set."""
    table, mask = caption_embeddings(model_clip, store, images)
    txt = table[mask]  # [T, D], image-major, caption order
    txt_to_img = np.nonzero(mask)[0]  # [T]
    z = image_features(model_clip, store, captions_lib.as_examples(images), _data_key(spec), augment=False,
                       views=1, seed=0, desc=f"{desc} image features")[:, 0]  # [N, D]
    out = {}
    for prefix, emb in (("", embed_images(model, params, z, mesh, config.eval_batch_size)),
                        ("zeroshot_", z / np.linalg.norm(z, axis=-1, keepdims=True))):
        ranks = metrics_lib.similarity_ranks(emb, txt, txt_to_img, block=config.eval_block, ties=config.eval_ties)
        out.update({prefix + k: v for k, v in metrics_lib.recalls_from_ranks(*ranks).items()})
    logging.info("%s (%d images, %d captions): %s", desc, len(images), len(txt),
                 {k: round(v, 2) for k, v in out.items()})
    return out


# ------------------------------------------------------------------ pipeline


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the whole retrieval pipeline; returns (and writes to WORKDIR/metrics.json) the metrics.

    Keys: for every evaluation set NAME, `NAME_i2t_r1` ... `NAME_t2i_r10` (AAPE) and
    `NAME_zeroshot_i2t_r1` ... (zero-shot CLIP); the set `config.eval_primary` also
    unprefixed (`i2t_r1`, ..., `zeroshot_t2i_r10`). Plus `train_loss`, `gamma`, `history`.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main_process():
        atomic.write_json(os.path.join(workdir, CONFIG_FILE), {"config": config.to_dict(), "git": git_revision()})
    if config.eval_primary not in config.eval:
        raise ValueError(f"config.eval_primary {config.eval_primary!r} is not in config.eval ({list(config.eval)})")
    if config.eval_ties not in metrics_lib.TIES:
        raise ValueError(f"config.eval_ties is {config.eval_ties!r}; choose one of {metrics_lib.TIES}")
    mesh = sharding.make_mesh(config.num_devices or None)
    sharding.check_divisible(config.batch_size, mesh)
    # Every data set is read (and its image files checked) before anything slow runs.
    train = load_captioned(config.dataset) if config.num_epochs > 0 else []
    if config.num_epochs > 0 and len(train) < config.batch_size:
        raise ValueError(f"{len(train)} training images are fewer than batch_size {config.batch_size}")
    eval_images = {name: load_captioned(spec) for name, spec in config.eval.items()}
    store = FeatureStore(config.feature_store or os.path.join(workdir, "feature_store"))
    model_clip = load_clip(config, workdir)
    model = retrieval_model(config, model_clip)
    dim = model_clip.config.projection_dim

    history: list[dict] = []
    if config.num_epochs == 0:
        params = _restore_params(model, config, dim)
    else:
        # Stage 1: captions and images through the frozen CLIP, once, into the store.
        table, mask = caption_embeddings(model_clip, store, train)
        train_z = image_features(model_clip, store, captions_lib.as_examples(train), _data_key(config.dataset),
                                 augment=True, views=config.dataset.num_views, seed=config.seed,
                                 desc="train image features")
        rows = np.arange(len(train))
        steps_per_epoch = len(train) // config.batch_size
        tx = make_optimizer(config.optim, steps_per_epoch, config.num_epochs)
        weights = LossWeights(config.loss.distill_weight, config.loss.aggregator_weight)
        step_data = RetrievalData(prompts=jnp.asarray(table), prompt_mask=jnp.asarray(mask),
                                  logit_scale=jnp.asarray(model_clip.params["logit_scale"]))
        run = Run(
            clip=model_clip, tx=tx, init_params=lambda key: _init_params(model, dim, key),
            make_step=lambda axis: make_train_step(model, tx, weights, axis_name=axis), step_data=step_data,
            features=train_z, labels=rows, prompt_rows=rows, steps_per_epoch=steps_per_epoch,
        )
        # Stage 2: training (checkpoints, resume, preemption, NaN stop: aape_jax.train.fit).
        params, history = fit(run, config, workdir, mesh)

    # Stage 3: every evaluation set, AAPE and zero-shot CLIP in the same harness.
    metrics: dict[str, Any] = {}
    for name, spec in config.eval.items():
        result = evaluate_set(model, params, model_clip, store, eval_images[name], spec, config, mesh, desc=name)
        metrics.update({f"{name}_{k}": v for k, v in result.items()})
        if name == config.eval_primary:
            metrics.update(result)
    gamma = params["gate"] if "gate" in params else config.model.alpha
    metrics.update({
        "train_loss": history[-1]["loss"] if history else None,
        "gamma": float(np.asarray(gamma)),
        "history": history,
        "num_devices": int(mesh.size),
        "random_weights": not config.clip,
    })
    writer = _summary_writer(workdir)
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, float) and any(k.startswith(f"{name}_") for name in config.eval):
                writer.add_scalar(f"eval/{k}", v, config.num_epochs)
        writer.close()
    if distributed.is_main_process():
        atomic.write_json(os.path.join(workdir, METRICS_FILE), metrics)
    logging.info("%s: AAPE i2t R@1 %.2f t2i R@1 %.2f | zero-shot CLIP i2t R@1 %.2f t2i R@1 %.2f", config.eval_primary,
                 metrics["i2t_r1"], metrics["t2i_r1"], metrics["zeroshot_i2t_r1"], metrics["zeroshot_t2i_r1"])
    return metrics
