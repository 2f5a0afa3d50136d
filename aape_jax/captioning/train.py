"""`train_and_evaluate(config, workdir)` for captioning: captioned images -> LiMBeR (+ AAPE) maps -> captions.

Stages (the loop, checkpoints, resume, preemption and NaN stop are `aape_jax.trainer`'s):
(1) the frozen CLIP encodes every training image (pooled features, or with the ViT's patch grid)
    into the feature store, and for AAPE every caption; the decoder's tokenizer turns each caption
    into targets (+ EOS), cut at `config.max_caption_tokens`;
(2) the maps train with the frozen decoder's loss on the caption tokens
    (`aape_jax.captioning.train_step`); method "aape" also trains the LiMBeR baseline (the map alone)
    in WORKDIR/limber when `config.compare_limber`;
(3) every evaluation set is captioned from its images alone (`AAPECaptioner`, the inference API)
    and scored: CIDEr-D, BLEU-4 and METEOR (pycocoevalcap), CLIP-S and RefCLIP-S.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from aape_jax import trainer
from aape_jax.captioning import metrics as metrics_lib
from aape_jax.captioning.captioner import AAPECaptioner
from aape_jax.captioning.model import CaptionMaps, init_maps, maps_config
from aape_jax.captioning.train_step import CaptionData, make_loss_fn
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data import captions as captions_lib
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.text_features import encode_texts, prompt_table
from aape_jax.errors import ConfigError, listing
from aape_jax.frozen_stage import image_features, load_clip, load_lm
from aape_jax.lm.language_model import LanguageModel
from aape_jax.numerics import l2_normalize
from aape_jax.retrieval.train import load_captioned
from aape_jax.train_step import LossWeights

NOCAPS_FILE = "nocaps_val_4500_captions.json"  # NoCaps val's captions, beside the images unless `annotations`


# ------------------------------------------------------------------ data


def load_eval_set(spec: ml_collections.ConfigDict) -> tuple[list[captions_lib.CaptionedImage], list[str] | None]:
    """An evaluation set's images and, for NoCaps, each image's domain."""
    if spec.name != "nocaps":
        return load_captioned(spec), None
    from aape_jax.data import nocaps

    if not spec.root:
        raise ConfigError("the nocaps evaluation set needs its root: the folder of the NoCaps val images",
                          hint="set --config.eval.nocaps_val.root=DIR")
    path = spec.annotations or os.path.join(spec.root, NOCAPS_FILE)
    entries = nocaps.read_nocaps(path, spec.root, check_files=spec.check_files)
    return [e.captioned for e in entries], [e.domain for e in entries]


def check_captions(images: list[captions_lib.CaptionedImage], method: str, where: str) -> None:
    """AAPE's leave-one-out summary needs a second caption of every training image."""
    if method != "aape":
        return
    single = [im.key for im in images if len(im.captions) < 2]
    if single:
        raise ConfigError(f"{where}: {len(single)} training images have a single caption, and AAPE summarises "
                          f"an image's OTHER captions (leave-one-out): {listing(single)}",
                          hint="use config.method='limber' for single-caption data")


def caption_targets(decoder: LanguageModel, images: list[captions_lib.CaptionedImage],
                    max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Target ids [N, M, T] (caption tokens cut at `max_tokens`, then EOS; pad after), their mask,
    which of the M captions exist [N, M], and how many captions were cut."""
    eos = decoder.config.eos_token_ids[0] if decoder.config.eos_token_ids else decoder.tokenizer.eos_id
    if eos is None:
        raise ConfigError(f"{decoder.source}: the decoder has no EOS token id (config.json eos_token_id), "
                          "which ends every caption target")
    encoded = [[decoder.tokenizer.backend.encode(" " + c.strip(), add_special_tokens=False).ids
                for c in im.captions] for im in images]
    cut = sum(len(ids) > max_tokens for row in encoded for ids in row)
    rows, per_row = len(images), max(len(row) for row in encoded)
    length = min(max_tokens, max(len(ids) for row in encoded for ids in row)) + 1
    targets = np.full((rows, per_row, length), decoder.tokenizer.pad_id or 0, np.int32)
    mask = np.zeros((rows, per_row, length), bool)
    for i, row in enumerate(encoded):
        for j, ids in enumerate(row):
            ids = ids[:max_tokens] + [eos]
            targets[i, j, :len(ids)], mask[i, j, :len(ids)] = ids, True
    valid = np.zeros((rows, per_row), bool)
    for i, row in enumerate(encoded):
        valid[i, :len(row)] = True
    return targets, mask, valid, cut


def soft_length(maps: CaptionMaps, model_clip: FrozenCLIP) -> int:
    """Soft tokens per image: k (or the ViT's patches for grid input), plus m for AAPE."""
    c = maps.config
    image = c.num_image_tokens if c.image_input == "pooled" else model_clip.config.vision.num_patches
    return image + (c.num_aape_tokens if c.aape is not None else 0)


def check_context(config: ml_collections.ConfigDict, soft: int, decoder: LanguageModel, prompt_len: int,
                  target_len: int, where: str) -> None:
    """Soft tokens + prompt + the longest target (or the generated tokens) must fit the decoder's context."""
    text = max(target_len, int(config.decoding.max_new_tokens))
    longest = soft + prompt_len + text
    if longest > decoder.config.max_positions:
        raise ConfigError(
            f"{where}: {soft} soft tokens + a {prompt_len}-token prompt + {text} caption tokens = {longest} "
            f"positions, more than the context of {decoder.source} ({decoder.config.max_positions} positions)",
            hint="lower --config.max_caption_tokens, --config.decoding.max_new_tokens or the soft tokens")


# ------------------------------------------------------------------ evaluation


def clip_scores(model_clip: FrozenCLIP, image_z: np.ndarray, captions: list[str],
                references: list[tuple[str, ...]]) -> dict[str, float]:
    """CLIP-S and RefCLIP-S of generated captions (texts prefixed "A photo depicts", as Hessel et al.)."""
    cand = l2_normalize(encode_texts(model_clip, [metrics_lib.CLIP_S_PREFIX + " " + c for c in captions]))
    width = max(len(r) for r in references)
    flat = [metrics_lib.CLIP_S_PREFIX + " " + r for refs in references for r in refs]
    ref_z = l2_normalize(encode_texts(model_clip, flat))
    table = np.zeros((len(references), width, ref_z.shape[-1]), np.float32)
    mask = np.zeros((len(references), width), bool)
    k = 0
    for i, refs in enumerate(references):
        table[i, :len(refs)], mask[i, :len(refs)] = ref_z[k:k + len(refs)], True
        k += len(refs)
    z = l2_normalize(image_z)
    return {"clip_s": metrics_lib.clip_s(z, cand), "refclip_s": metrics_lib.refclip_s(z, cand, table, mask)}


def caption_metrics(model_clip: FrozenCLIP, image_z: np.ndarray, captions: list[str],
                    references: list[tuple[str, ...]], coco: bool,
                    subsets: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Per subset of the images (name -> indices, each scored as a corpus of its own): CIDEr-D, CLIP-S and
    RefCLIP-S, and with `coco` BLEU-4 and METEOR; each x100. CIDEr-D is pycocoevalcap's on PTB tokens
    with `coco` (as papers report it), else our scorer on our simple tokenisation (`metrics.cider_d`,
    equal to pycocoevalcap's on the same tokens; no Java needed)."""
    cands = {i: c for i, c in enumerate(captions)}
    refs = {i: list(r) for i, r in enumerate(references)}
    if coco:  # one PTB tokenisation and one METEOR process for every subset
        out = {name: {k: 100 * v for k, v in scores.items()}
               for name, scores in metrics_lib.coco_caption_scores_by_subset(cands, refs, subsets).items()}
    else:
        out = {name: {"cider_d": 100 * metrics_lib.cider_d({i: cands[i] for i in idx}, {i: refs[i] for i in idx})}
               for name, idx in subsets.items()}
    for name, idx in subsets.items():
        scores = clip_scores(model_clip, image_z[idx], [captions[i] for i in idx], [references[i] for i in idx])
        out[name].update({k: 100 * v for k, v in scores.items()})
    return out


def evaluate_set(captioner: AAPECaptioner, store: FeatureStore, images: list[captions_lib.CaptionedImage],
                 domains: list[str] | None, spec: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                 desc: str) -> tuple[dict[str, float], list[str]]:
    """Captions the set from its images alone and scores them (NoCaps: also per domain)."""
    grid = captioner.model.config.image_input == "grid"
    rows = image_features(captioner.clip, store, captions_lib.as_examples(images), {"captioned": spec.to_dict()},
                          augment=False, views=1, seed=0, desc=f"{desc} image features", grid=grid)[:, 0]
    captions = captioner.caption_features(rows)
    subsets = {"": list(range(len(images)))}
    for domain in sorted(set(domains or ())):
        subsets[f"{domain.replace('-domain', '')}_"] = [i for i, d in enumerate(domains) if d == domain]
    scored = caption_metrics(captioner.clip, rows[:, :captioner.clip.config.projection_dim], captions,
                             [im.captions for im in images], config.coco_metrics, subsets)
    out = {f"{part}{k}": v for part, scores in scored.items() for k, v in scores.items()}
    logging.info("%s (%d images): %s; e.g. %r", desc, len(images), {k: round(v, 2) for k, v in out.items()},
                 captions[:3])
    return out, captions


# ------------------------------------------------------------------ pipeline


def prepare_targets(config: ml_collections.ConfigDict, model_clip: FrozenCLIP, decoder: LanguageModel,
                    train: list[captions_lib.CaptionedImage]) -> tuple[np.ndarray, ...]:
    """The training captions as targets, and the prompt's ids; checks every method's sequence fits the
    decoder's context (before any image is encoded)."""
    targets, target_mask, valid, cut = caption_targets(decoder, train, config.max_caption_tokens)
    if cut:
        logging.warning("%d training captions are longer than config.max_caption_tokens=%d tokens and were cut",
                        cut, config.max_caption_tokens)
    prompt = np.asarray(decoder.tokenizer.backend.encode(config.prompt, add_special_tokens=False).ids, np.int32)
    maps = CaptionMaps(maps_config(config.model, config.method, model_clip.config, decoder.config))
    check_context(config, soft_length(maps, model_clip), decoder, len(prompt), targets.shape[-1], "config.dataset")
    return targets, target_mask, valid, prompt


def train_features(config: ml_collections.ConfigDict, model_clip: FrozenCLIP, store: FeatureStore,
                   train: list[captions_lib.CaptionedImage]) -> np.ndarray:
    """Cached features [N, views, F] of the training images (with the patch grid for grid maps)."""
    if not train:
        return np.zeros((0, 1, 1), np.float32)
    return image_features(model_clip, store, captions_lib.as_examples(train), {"captioned": config.dataset.to_dict()},
                          augment=config.dataset.augment, views=config.dataset.num_views, seed=config.seed,
                          desc="train image features", grid=config.model.image_input == "grid")


def train_maps(method: str, config: ml_collections.ConfigDict, workdir: str, mesh, model_clip: FrozenCLIP,
               decoder: LanguageModel, store: FeatureStore, train: list[captions_lib.CaptionedImage],
               features: np.ndarray, prepared: tuple[np.ndarray, ...] | None) -> tuple[CaptionMaps, Any, list[dict]]:
    """Trains (or restores, with num_epochs = 0) the maps of `method` in `workdir`; `prepared` is
    `prepare_targets`' output."""
    maps = CaptionMaps(maps_config(config.model, method, model_clip.config, decoder.config))
    fresh = lambda key: init_maps(maps, key)
    if config.num_epochs == 0:
        params, history = trainer.evaluation_params(fresh, config, workdir)
        return maps, params, history
    targets, target_mask, valid, prompt = prepared
    if method == "aape":
        caption_z, _ = prompt_table(model_clip, store, [list(im.captions) for im in train], [im.key for im in train])
    else:  # LiMBeR has no aggregator: a placeholder of the right rank
        caption_z = np.zeros((len(train), 1, 1), np.float32)
    n = len(train)
    data = CaptionData(
        lm_params=decoder.params, targets=jnp.asarray(targets), target_mask=jnp.asarray(target_mask),
        prompt_ids=jnp.asarray(np.broadcast_to(prompt, (n, len(prompt)))),
        prompt_mask=jnp.ones((n, len(prompt)), bool),
        caption_embeds=jnp.asarray(caption_z), caption_valid=jnp.asarray(valid),
        logit_scale=jnp.asarray(model_clip.params["logit_scale"]))
    weights = LossWeights(config.loss.distill_weight, config.loss.aggregator_weight)
    rows = np.arange(n)
    run = trainer.TrainingRun(init_params=fresh, step_data=data, features=features, labels=rows, prompt_rows=rows,
                              make_loss=lambda axis: make_loss_fn(maps, decoder.config, decoder.dtype, weights,
                                                                  axis_name=axis))
    params, history = trainer.fit(run, config, workdir, mesh)
    return maps, params, history


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the captioning pipeline; returns (and writes to WORKDIR/metrics.json) the metrics.

    Keys, for every evaluation set NAME: `NAME_cider_d`, `NAME_clip_s`, `NAME_refclip_s` (and with
    `config.coco_metrics` `NAME_bleu_4`, `NAME_meteor`; NoCaps also per domain,
    `NAME_in_cider_d`, `NAME_near_...`, `NAME_out_...`), all x100; the set `config.eval_primary` also
    unprefixed; the LiMBeR baseline's the same under `limber_`. Plus `train_loss`, `history`, `samples`.
    """
    workdir, record, mesh = trainer.start_run(config, workdir)
    # Every data set is read (and its image files checked) before anything slow runs.
    train = load_captioned(config.dataset) if config.num_epochs > 0 else []
    if config.num_epochs > 0 and len(train) < config.batch_size:
        raise ConfigError(f"{len(train)} training images are fewer than config.batch_size {config.batch_size}")
    methods = [config.method] + (["limber"] if config.method == "aape" and config.compare_limber else [])
    check_captions(train, config.method, "config.dataset")
    eval_sets = {name: load_eval_set(spec) for name, spec in config.eval.items()}
    store = FeatureStore(config.feature_store or os.path.join(workdir, "feature_store"))
    model_clip = load_clip(config, workdir)
    decoder = load_lm(config, workdir)
    prepared = prepare_targets(config, model_clip, decoder, train) if train else None
    features = train_features(config, model_clip, store, train)

    metrics: dict[str, Any] = {}
    for method in methods:
        prefix = "" if method == config.method else f"{method}_"
        run_dir = workdir if not prefix else os.path.join(workdir, method)
        maps, params, history = train_maps(method, config, run_dir, mesh, model_clip, decoder, store, train, features,
                                           prepared)
        captioner = AAPECaptioner(model_clip, decoder, maps, params, config.prompt, config.decoding.to_dict(),
                                  batch_size=config.eval_batch_size)
        for name, spec in config.eval.items():
            result, captions = evaluate_set(captioner, store, *eval_sets[name], spec, config, desc=f"{prefix}{name}")
            metrics.update({f"{prefix}{name}_{k}": v for k, v in result.items()})
            if name == config.eval_primary:
                metrics.update({prefix + k: v for k, v in result.items()})
                metrics[f"{prefix}samples"] = [
                    {"key": im.key, "caption": c, "references": list(im.captions)}
                    for im, c in list(zip(eval_sets[name][0], captions))[:5]]
        metrics[f"{prefix}train_loss"] = history[-1]["loss"] if history else None
        metrics[f"{prefix}history"] = history
    metrics.update({"method": config.method, "num_devices": int(mesh.size), "random_weights": not config.clip,
                    "random_lm": not config.lm})
    if record["history"]:
        metrics["config_changes"] = record["history"]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    trainer.write_metrics(workdir, metrics, scalars, config.num_epochs)
    logging.info("%s: CIDEr-D %.2f CLIP-S %.2f RefCLIP-S %.2f", config.eval_primary, metrics["cider_d"],
                 metrics["clip_s"], metrics["refclip_s"])
    return metrics
