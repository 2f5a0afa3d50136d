"""`train_and_evaluate(config, workdir)` for classification: features -> training -> base/new evaluation.

Stages: (1) the frozen CLIP encodes prompts, templates and images once into
the feature store (K augmented views per training image; `frozen_stage.py`);
(2) the method's trainable tree (`aape_jax/methods/`) learns from those
features in the shared trainer (`trainer.py`: one jitted, data-parallel step,
pmap as an alternative, checkpoints, resume, preemption); (3) evaluation on
the protocol's test sets (base/new, all classes, or transfer targets).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from aape_jax import config_check, distributed, evaluate, methods, storage, trainer
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data import protocol, synthetic
from aape_jax.data import toyworld as toyworld_data
from aape_jax.data.feature_store import FeatureStore, fingerprint
from aape_jax.data.types import ImageDataset
from aape_jax.errors import ConfigError
from aape_jax.frozen_stage import drop_skipped, image_features, load_clip
from aape_jax.numerics import harmonic_mean
from aape_jax.prompts import IMAGENET_TEMPLATES, match_classes, read_class_descriptions
from aape_jax.prompts.aliases import aliases_for


# ------------------------------------------------------------------ set-up


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

    return load_named(name, d.root, source=d.source)


def dataset_identity(config: ml_collections.ConfigDict, name: str) -> dict:
    """What determines a dataset's images, for feature-store keys (not shots, views or seeds)."""
    d = config.dataset
    if name == "synthetic":
        return {"name": name, "classes": d.synthetic_classes, "train": d.synthetic_train_per_class,
                "test": d.synthetic_test_per_class}
    if name in toyworld_data.TASKS:
        return {"name": name, "world": toyworld_data.task_fingerprint(name)}
    return {"name": name, "root": storage.absolute(d.root) if d.root else "", "source": d.source}


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the whole pipeline for `config.method`; returns (and writes) the metrics dict.

    Before any work the workdir is prepared (`trainer.prepare_workdir`: the
    config validated and compared with the one its checkpoints and metrics were
    made with). `num_epochs == 0` evaluates without training
    (`trainer.evaluation_params`); no training images are encoded then.
    """
    workdir, record, mesh = trainer.start_run(config, workdir)
    store = FeatureStore(config.feature_store or os.path.join(workdir, "feature_store"))

    # Stage 1: the frozen CLIP, once, into the store.
    model_clip = load_clip(config, workdir)
    for note in config_check.backbone_notes(config, model_clip.config):
        logging.warning(note)
    dataset = load_dataset(config)
    train_classes, evaluations = protocol_splits(config, dataset)
    train_names = [dataset.classnames[i] for i in train_classes]
    prompts_by_name: dict[str, list[str]] = {}
    skipped_images: dict[str, list[str]] = {}

    def prompts_of(names):
        missing = [n for n in names if n not in prompts_by_name]
        if missing:
            prompts_by_name.update(zip(dataset.classnames, class_prompts(
                config, dataset.name, dataset.classnames, workdir, config.prompts.path)))
            for target, target_path in dict(config.prompts.target_paths).items():
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
        params, history = trainer.evaluation_params(learner.init_params, config, workdir)
    elif learner.init_params is not None:
        # The draw is cached as JSON, as CoOp does, so every method and rerun trains on the same images.
        # (on_bad_image does not change the draw: left out, the draw files written before it stay in use.)
        dataset_fields = {k: v for k, v in config.dataset.to_dict().items() if k != "on_bad_image"}
        draw = {"dataset": dataset_fields, "protocol": config.protocol}
        fewshot_file = (store.root / "fewshot" /
                        f"{dataset.name}_shot{config.dataset.shots}_seed{config.seed}_{fingerprint(draw)[:12]}.json")
        train = protocol.few_shot_cached(protocol.subsample(dataset.train, train_classes), config.dataset.shots,
                                         config.seed, fewshot_file)
        if len(train) < config.batch_size:
            raise ConfigError(f"config.batch_size is {config.batch_size}, more than the {len(train)} training "
                              f"images ({config.dataset.shots} shots of {len(train_classes)} classes)",
                              hint="lower --config.batch_size (it must stay divisible by the device count)")
        train_z = image_features(model_clip, store, train, dataset_identity(config, dataset.name), augment=True,
                                 views=config.dataset.num_views, seed=config.seed, desc="train image features",
                                 **decoding(config))
        train, train_z, skipped_images["train"] = drop_skipped(train, train_z, "train images")
        labels = np.array([e.label for e in train])
        run = trainer.TrainingRun(init_params=learner.init_params, make_loss=learner.make_loss,
                                  step_data=learner.step_data, features=train_z, labels=labels, prompt_rows=labels)
        params, history = trainer.fit(run, config, workdir, mesh)

    # Stage 3: evaluation on each (test set, candidate classes) of the protocol.
    metrics: dict[str, Any] = {"method": learner.name, "protocol": config.protocol,
                               **evaluate_protocol(config, learner, params, model_clip, store, evaluations, mesh,
                                                   skipped_images)}
    if config.report_zeroshot and learner.name != "zeroshot_clip":
        # Zero-shot CLIP with the same template on the same images: the reference every method must beat.
        zeroshot = methods.build(_zeroshot_config(config), model_clip, store, train_names, prompts_of)
        reference = evaluate_protocol(config, zeroshot, None, model_clip, store, evaluations, mesh, {})
        metrics["zeroshot"] = {k: v for k, v in reference.items() if isinstance(v, float)}  # not per class
    metrics.update(
        train_loss=history[-1]["loss"] if history else None, history=history, num_devices=int(mesh.size),
        random_weights=not config.clip,
    )
    if any(skipped_images.values()):  # dataset.on_bad_image="skip": the images left out, per split
        metrics["skipped_images"] = {k: v for k, v in skipped_images.items() if v}
    if record["history"]:  # config.resume_with_changes: what changed, and from which step on
        metrics["config_changes"] = record["history"]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float) and k != "train_loss"}
    trainer.write_metrics(workdir, metrics, scalars, config.num_epochs)
    logging.info("%s: %s", learner.name, {k: round(v, 2) for k, v in metrics.items() if isinstance(v, float)})
    return metrics


def decoding(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`image_features`' decode arguments from the config: threads (`decode_workers`, 0: one per core) and
    what an undecodable image does (`dataset.on_bad_image`)."""
    return {"workers": config.get("decode_workers", 0) or None,
            "on_bad_image": config.dataset.get("on_bad_image", "fail")}


def evaluate_protocol(config: ml_collections.ConfigDict, learner: methods.Learner, params: Any, model_clip: FrozenCLIP,
                      store: FeatureStore, evaluations: list[tuple[str, ImageDataset, list[int]]], mesh,
                      skipped_images: dict[str, list[str]]) -> dict[str, Any]:
    """`<split>_acc` and `<split>_per_class_acc` of every evaluation, plus H (base2new) or the target mean
    (transfer), on `config.evaluate_split` ("test", or "val" for hyper-parameter selection). The keys of
    the images left out as undecodable (`dataset.on_bad_image="skip"`) go into `skipped_images[split]`."""
    eval_split = config.evaluate_split
    clip_params = model_clip.params if learner.uses_clip_text else None
    metrics: dict[str, Any] = {}
    for split, test_set, classes in evaluations:
        names = [test_set.classnames[i] for i in classes]
        test = protocol.subsample(getattr(test_set, eval_split), classes)
        if not test:
            raise ConfigError(f"{test_set.name} has no {eval_split} images for its {split} classes "
                             "(config.evaluate_split)")
        z = image_features(model_clip, store, test, dataset_identity(config, test_set.name), augment=False, views=1,
                           seed=0, desc=f"{split} {eval_split} features", **decoding(config))
        test, z, skipped_images[split] = drop_skipped(test, z, f"{split} {eval_split} images")
        z = z[:, 0]
        pred = evaluate.logits(learner.logits_fn, params, z, learner.class_text(names), clip_params,
                               model_clip.params["logit_scale"], mesh, config.eval_batch_size).argmax(-1)
        truth = [e.label for e in test]
        metrics[f"{split}_acc"] = protocol.accuracy(pred, truth)
        metrics[f"{split}_per_class_acc"] = protocol.per_class_accuracy(pred, truth, len(names)).tolist()
    if "base_acc" in metrics and "new_acc" in metrics:
        metrics["harmonic_mean"] = harmonic_mean(metrics["base_acc"], metrics["new_acc"])
    targets = [split for split, _, _ in evaluations[1:]]
    if config.protocol == "transfer" and targets:
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
    name = config.protocol
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
