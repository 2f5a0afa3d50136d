"""`train_and_evaluate(config, workdir)` for VQA (task "vqa"): maps trained on captions, then VQA answers.

As LiMBeR: the maps (LiMBeR's, and AAPE's) are trained on captioned images
(`aape_jax.captioning.train`, or taken from `config.init`, a captioning run),
then the frozen decoder answers `[image] Q: {question} A:` after n in-context
examples `[image_i] Q: {q_i} A: {a_i}` (n in `config.vqa.shots`, the examples
drawn from the training questions, the same for every test question), and an
answer is cut to the word count of the longest human answer. A few-shot
fine-tuned variant trains the maps further on `config.vqa.finetune_questions`
training questions (the decoder's loss on their human answers, AAPE tokens from
the generator as at test time) in WORKDIR/vqa_finetune, and answers zero-shot.
Scores are the official VQA accuracy (`aape_jax.vqa`, `config.vqa.style`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from aape_jax import trainer, vqa
from aape_jax.captioning.captioner import VQA_PROMPT, AAPECaptioner
from aape_jax.captioning.train import (check_captions, check_context, prepare_targets, soft_length, train_features,
                                       train_maps)
from aape_jax.captioning.train_step import CaptionData, make_loss_fn
from aape_jax.data import vqa as vqa_data
from aape_jax.data.feature_store import FeatureStore
from aape_jax.data.synthetic_vqa import make_vqa_dataset
from aape_jax.data.types import Example
from aape_jax.errors import ConfigError
from aape_jax.frozen_stage import image_features, load_clip, load_lm
from aape_jax.lm.language_model import LanguageModel
from aape_jax.retrieval.train import load_captioned
from aape_jax.train_step import LossWeights


def load_questions(spec: ml_collections.ConfigDict) -> tuple[list[vqa_data.VQAQuestion], list[vqa_data.VQAQuestion]]:
    """(training pool, test questions) of `config.vqa`."""
    if spec.name == "synthetic":
        return make_vqa_dataset(spec.synthetic_train, spec.synthetic_test, seed=0)
    if spec.name != "vqav2":
        raise ConfigError(f"config.vqa.name is {spec.name!r}; choose 'synthetic' or 'vqav2'")
    if not spec.root:
        raise ConfigError("config.vqa.root is empty: give the COCO folder holding train2014/ and val2014/")
    def split(name: str, limit: int) -> list[vqa_data.VQAQuestion]:
        return vqa_data.read_vqa(
            os.path.join(spec.annotations_dir or spec.root, f"v2_OpenEnded_mscoco_{name}2014_questions.json"),
            os.path.join(spec.annotations_dir or spec.root, f"v2_mscoco_{name}2014_annotations.json"),
            spec.root, split=name, check_files=spec.check_files, max_questions=limit)
    return split("train", spec.max_train_questions), split("val", spec.max_questions)


def question_features(captioner: AAPECaptioner, store: FeatureStore, questions: list[vqa_data.VQAQuestion],
                      spec: ml_collections.ConfigDict, desc: str) -> np.ndarray:
    """Feature rows [N, F] of the questions' images (each image once in the store)."""
    keys = sorted({q.image_key for q in questions})
    first = {}
    for q in questions:
        first.setdefault(q.image_key, q.image)
    examples = [Example(image=first[k], label=0, key=k) for k in keys]
    rows = image_features(captioner.clip, store, examples, {"vqa": spec.to_dict(), "part": desc}, augment=False,
                          views=1, seed=0, desc=f"{desc} image features",
                          grid=captioner.model.config.image_input == "grid")[:, 0]
    index = {k: i for i, k in enumerate(keys)}
    return rows[[index[q.image_key] for q in questions]]


def truncate(answer: str, human_answers: tuple[str, ...]) -> str:
    """LiMBeR's cut: at most as many words as the longest human answer."""
    return " ".join(answer.split()[:max(len(a.split()) for a in human_answers)])


def evaluate_vqa(captioner: AAPECaptioner, test: list[vqa_data.VQAQuestion], test_z: np.ndarray,
                 pool: list[vqa_data.VQAQuestion], pool_z: np.ndarray, shots: int, style: str,
                 seed: int) -> tuple[float, list[str]]:
    """VQA accuracy (percent) with `shots` in-context examples per question, and the answers."""
    examples = vqa_data.few_shot(pool, shots, seed) if shots else []
    where = {q.question_id: i for i, q in enumerate(pool)}
    context = [[(pool_z[where[e.question_id]], e.question, e.answers[0]) for e in examples]] * len(test)
    answers = captioner.answer_features(test_z, [q.question for q in test], context if shots else ())
    answers = [truncate(a, q.answers) for a, q in zip(answers, test)]
    score = vqa.mean_accuracy({q.question_id: a for q, a in zip(test, answers)},
                              {q.question_id: q.answers for q in test}, style=style)
    return score, answers


def finetune(captioner: AAPECaptioner, config: ml_collections.ConfigDict, workdir: str, mesh,
             questions: list[vqa_data.VQAQuestion], features: np.ndarray) -> Any:
    """The maps trained further on a few questions (loss on their human answers); returns the tree."""
    decoder: LanguageModel = captioner.lm
    spec = config.vqa
    eos = decoder.config.eos_token_ids[0] if decoder.config.eos_token_ids else decoder.tokenizer.eos_id
    encode = lambda text: decoder.tokenizer.backend.encode(text, add_special_tokens=False).ids
    answers = [[encode(" " + a)[:config.max_caption_tokens] + [eos] for a in q.answers] for q in questions]
    prompts = [encode(VQA_PROMPT.format(question=q.question)) for q in questions]
    t = max(len(a) for row in answers for a in row)
    m = max(len(row) for row in answers)
    lp = max(len(p) for p in prompts)
    check_context(config, soft_length(captioner.model, captioner.clip), decoder, lp, t, "config.vqa")
    pad = decoder.tokenizer.pad_id or 0
    targets, target_mask = np.full((len(questions), m, t), pad, np.int32), np.zeros((len(questions), m, t), bool)
    valid = np.zeros((len(questions), m), bool)
    prompt_ids, prompt_mask = np.full((len(questions), lp), pad, np.int32), np.zeros((len(questions), lp), bool)
    for i, (row, p) in enumerate(zip(answers, prompts)):
        prompt_ids[i, lp - len(p):], prompt_mask[i, lp - len(p):] = p, True  # left-padded
        for j, a in enumerate(row):
            targets[i, j, :len(a)], target_mask[i, j, :len(a)], valid[i, j] = a, True, True
    data = CaptionData(lm_params=decoder.params, targets=jnp.asarray(targets), target_mask=jnp.asarray(target_mask),
                       prompt_ids=jnp.asarray(prompt_ids), prompt_mask=jnp.asarray(prompt_mask),
                       caption_embeds=jnp.zeros((len(questions), 1, 1)), caption_valid=jnp.asarray(valid),
                       logit_scale=jnp.asarray(captioner.clip.params["logit_scale"]))
    rows = np.arange(len(questions))
    trained = captioner.params
    run = trainer.TrainingRun(
        init_params=lambda key: trained, step_data=data, features=features[:, None], labels=rows, prompt_rows=rows,
        make_loss=lambda axis: make_loss_fn(captioner.model, decoder.config, decoder.dtype, LossWeights(),
                                            axis_name=axis, aape_from="generator"))
    ft = ml_collections.ConfigDict(config.to_dict())
    ft.num_epochs, ft.batch_size, ft.init = spec.finetune_epochs, spec.finetune_batch_size, ""
    ft.optim.learning_rate = spec.finetune_learning_rate
    params, _ = trainer.fit(run, ft, workdir, mesh)
    return params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the maps on captions (or takes `config.init`'s), then answers; writes metrics.json.

    Keys: `vqa_accuracy` (zero-shot), `vqa_accuracy_{n}shot` for every n in `config.vqa.shots`,
    `vqa_accuracy_finetuned` (with `config.vqa.finetune_questions`); the LiMBeR baseline's the same
    under `limber_`; `samples` (a few questions, answers and human answers). Percentages.
    """
    workdir, record, mesh = trainer.start_run(config, workdir)
    train = load_captioned(config.dataset) if config.num_epochs > 0 else []
    check_captions(train, config.method, "config.dataset")
    pool, test = load_questions(config.vqa)
    spec = config.vqa
    if max(spec.shots) > len(pool) or spec.finetune_questions > len(pool):
        raise ConfigError(f"config.vqa asks for {max(max(spec.shots), spec.finetune_questions)} training questions; "
                          f"the training pool has {len(pool)}")
    store = FeatureStore(config.feature_store or os.path.join(workdir, "feature_store"))
    model_clip, decoder = load_clip(config, workdir), load_lm(config, workdir)
    prepared = prepare_targets(config, model_clip, decoder, train) if train else None
    features = train_features(config, model_clip, store, train)
    methods = [config.method] + (["limber"] if config.method == "aape" and config.compare_limber else [])
    metrics: dict[str, Any] = {}
    for method in methods:
        prefix = "" if method == config.method else f"{method}_"
        run_dir = workdir if not prefix else os.path.join(workdir, method)
        maps, params, history = train_maps(method, config, run_dir, mesh, model_clip, decoder, store, train, features,
                                           prepared)
        captioner = AAPECaptioner(model_clip, decoder, maps, params, config.prompt, config.decoding.to_dict(),
                                  batch_size=config.eval_batch_size)
        test_z = question_features(captioner, store, test, spec, "vqa test")
        pool_z = question_features(captioner, store, pool, spec, "vqa train")
        for shots in spec.shots:
            score, answers = evaluate_vqa(captioner, test, test_z, pool, pool_z, shots, spec.style, config.seed)
            metrics[f"{prefix}vqa_accuracy_{shots}shot"] = score
            if shots == 0:
                metrics[f"{prefix}vqa_accuracy"] = score
                metrics[f"{prefix}samples"] = [{"question": q.question, "answer": a, "human_answers": list(q.answers)}
                                               for q, a in list(zip(test, answers))[:5]]
        if spec.finetune_questions:
            chosen = vqa_data.few_shot(pool, spec.finetune_questions, config.seed)
            where = {q.question_id: i for i, q in enumerate(pool)}
            tuned = finetune(captioner, config, os.path.join(run_dir, "vqa_finetune"), mesh, chosen,
                             pool_z[[where[q.question_id] for q in chosen]])
            tuned_captioner = dataclasses.replace(captioner, params=tuned)
            metrics[f"{prefix}vqa_accuracy_finetuned"], _ = evaluate_vqa(tuned_captioner, test, test_z, pool, pool_z,
                                                                         0, spec.style, config.seed)
        metrics[f"{prefix}train_loss"] = history[-1]["loss"] if history else None
        metrics[f"{prefix}history"] = history
        logging.info("%s: %s", method, {k: round(v, 2) for k, v in metrics.items()
                                        if k.startswith(prefix + "vqa") and isinstance(v, float)})
    metrics.update({"method": config.method, "num_devices": int(mesh.size), "random_weights": not config.clip,
                    "random_lm": not config.lm, "vqa_style": spec.style})
    if record["history"]:
        metrics["config_changes"] = record["history"]
    trainer.write_metrics(workdir, metrics, {k: v for k, v in metrics.items() if isinstance(v, float)},
                          config.num_epochs)
    return metrics
