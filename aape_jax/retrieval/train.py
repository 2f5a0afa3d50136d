"""`train_and_evaluate(config, workdir)` for image-text retrieval: captions -> AAPE -> Recall@K.

Stages, as in `aape_jax.train` (the loop, checkpoints, preemption handling,
NaN stop, history and TensorBoard summaries are the shared `aape_jax.trainer`'s):
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

from aape_jax import config_check, sharding, trainer
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data import captions as captions_lib
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.synthetic_captions import make_captioned_dataset
from aape_jax.data.text_features import prompt_table
from aape_jax.errors import ConfigError
from aape_jax.frozen_stage import image_features, load_clip
from aape_jax.models.aape import aape_config, init_params
from aape_jax.numerics import l2_normalize, padded_batches
from aape_jax.retrieval import metrics as metrics_lib
from aape_jax.retrieval.train_step import RetrievalAAPE, RetrievalData, make_embed_fn, make_loss_fn
from aape_jax.train_step import LossWeights

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
    images = _load_dataset(spec.name, spec.source, spec.root, spec.annotations, spec.tfds_data_dir,
                           spec.check_files, spec.synthetic_train, spec.synthetic_test, spec.split)
    if not images:
        raise ValueError(f"{spec.name} split {spec.split!r} holds no images")
    return captions_lib.limit_captions(images, spec.max_captions)


def _data_key(spec: ml_collections.ConfigDict) -> dict:
    return {"captioned": spec.to_dict()}


def caption_embeddings(model_clip: FrozenCLIP, store: FeatureStore,
                       images: list[captions_lib.CaptionedImage]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised caption table [N, M, D] and mask [N, M] (cached; one row per image)."""
    return prompt_table(model_clip, store, [list(im.captions) for im in images], [im.key for im in images])


# ------------------------------------------------------------------ model


def retrieval_model(config: ml_collections.ConfigDict, model_clip: FrozenCLIP) -> RetrievalAAPE:
    m = config.model
    return RetrievalAAPE(aape_config(m, model_clip.config), score=m.score, alpha=float(m.alpha))


# ------------------------------------------------------------------ evaluation


def embed_images(model: RetrievalAAPE, params: Any, features: np.ndarray, mesh, batch_size: int) -> np.ndarray:
    """AAPE retrieval embeddings np.float32 [N, D] of image features [N, D], in padded sharded batches."""
    rep, shard = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    fn = jax.jit(make_embed_fn(model), in_shardings=(rep, shard), out_shardings=rep)
    params = sharding.replicate(params, mesh)
    return padded_batches(lambda z: fn(params, sharding.global_batch({"z": z}, mesh)["z"]),
                          np.asarray(features, np.float32), sharding.device_multiple(batch_size, mesh))


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
                        ("zeroshot_", l2_normalize(z))):
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
    workdir, record, mesh = trainer.start_run(config, workdir)
    # Every data set is read (and its image files checked) before anything slow runs.
    train = load_captioned(config.dataset) if config.num_epochs > 0 else []
    if config.num_epochs > 0 and len(train) < config.batch_size:
        raise ConfigError(f"{len(train)} training images are fewer than config.batch_size {config.batch_size}")
    eval_images = {name: load_captioned(spec) for name, spec in config.eval.items()}
    store = FeatureStore(config.feature_store or os.path.join(workdir, "feature_store"))
    model_clip = load_clip(config, workdir)
    model = retrieval_model(config, model_clip)
    fresh_params = lambda key: init_params(model, key)

    history: list[dict] = []
    if config.num_epochs == 0:
        if not config.init and config_check.latest_checkpoint_step(workdir) is None:
            raise ConfigError("config.num_epochs is 0: give config.init (a trained workdir) to evaluate")
        params, history = trainer.evaluation_params(fresh_params, config, workdir)
    else:
        # Stage 1: captions and images through the frozen CLIP, once, into the store.
        table, mask = caption_embeddings(model_clip, store, train)
        train_z = image_features(model_clip, store, captions_lib.as_examples(train), _data_key(config.dataset),
                                 augment=True, views=config.dataset.num_views, seed=config.seed,
                                 desc="train image features")
        rows = np.arange(len(train))
        weights = LossWeights(config.loss.distill_weight, config.loss.aggregator_weight)
        step_data = RetrievalData(prompts=jnp.asarray(table), prompt_mask=jnp.asarray(mask),
                                  logit_scale=jnp.asarray(model_clip.params["logit_scale"]))
        run = trainer.TrainingRun(init_params=fresh_params,
                                  make_loss=lambda axis: make_loss_fn(model, weights, axis_name=axis),
                                  step_data=step_data, features=train_z, labels=rows, prompt_rows=rows)
        # Stage 2: training (checkpoints, resume, preemption, NaN stop: aape_jax.trainer.fit).
        params, history = trainer.fit(run, config, workdir, mesh)

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
    if record["history"]:  # config.resume_with_changes: what changed, and from which step on
        metrics["config_changes"] = record["history"]
    scalars = {k: v for k, v in metrics.items()
               if isinstance(v, float) and any(k.startswith(f"{name}_") for name in config.eval)}
    trainer.write_metrics(workdir, metrics, scalars, config.num_epochs)
    logging.info("%s: AAPE i2t R@1 %.2f t2i R@1 %.2f | zero-shot CLIP i2t R@1 %.2f t2i R@1 %.2f", config.eval_primary,
                 metrics["i2t_r1"], metrics["t2i_r1"], metrics["zeroshot_i2t_r1"], metrics["zeroshot_t2i_r1"])
    return metrics
