"""The VQA config (task "vqa", aape_jax.captioning.vqa_train): the captioning config plus `config.vqa`.

Arguments: those of aape_jax/configs/captioning.py, and style (master|update_style). The maps train
on captions first (as LiMBeR) unless `config.init` names a trained captioning run (num_epochs=0).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import captioning
from aape_jax.configs.args import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_arg(arg, **captioning.ARGS, style="master")
    runlocal = bool(args.runlocal)
    config = captioning.build(args)
    config.task = "vqa"  # dispatched by aape_jax.main to aape_jax.captioning.vqa_train
    config.eval = ml_collections.ConfigDict()  # no caption sets: VQA questions are evaluated instead
    config.eval_primary = ""
    config.vqa = ml_collections.ConfigDict()
    config.vqa.name = "synthetic" if runlocal else "vqav2"  # "synthetic" | "vqav2"
    config.vqa.root = ""  # vqav2: the COCO folder holding train2014/ and val2014/
    config.vqa.annotations_dir = ""  # vqav2: where the v2_*.json files are (empty: root)
    config.vqa.check_files = True
    config.vqa.max_questions = 0 if not runlocal else 0  # val questions evaluated (0: all 214,354)
    config.vqa.max_train_questions = 0  # training pool read (0: all); in-context and fine-tuning draw from it
    config.vqa.synthetic_train = 64  # synthetic only: scenes of the training pool and the test set
    config.vqa.synthetic_test = 24
    config.vqa.shots = (0, 1, 2, 4)  # in-context examples per question (LiMBeR's n-shot)
    # "master": the official evaluation (normalises only when the ten human answers disagree), as the
    # VQAv2 server; "update_style": the branch LiMBeR scored with (always normalises the prediction).
    config.vqa.style = str(args.style)
    config.vqa.finetune_questions = 16 if runlocal else 0  # few-shot fine-tuning of the maps (0: none)
    config.vqa.finetune_epochs = 5
    config.vqa.finetune_batch_size = 8
    config.vqa.finetune_learning_rate = 1e-3
    config.decoding.max_new_tokens = 5  # answers are short (cut to the longest human answer's words)
    config.decoding.method = "greedy"
    return config
