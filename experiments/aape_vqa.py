r"""AAPE for VQA (LiMBeR's protocol): maps trained on captions, then n-shot in-context answers with a
frozen decoder, and a few-shot fine-tuned variant; the official VQA accuracy.

Offline default (tiny random CLIP and decoder; maps trained on the generated captioned set; a
generated VQA set about the same kind of scenes, ten human answers per question; scores from random
weights mean nothing, they show the pipeline runs):

  python -m aape_jax.main --config experiments/aape_vqa.py:runlocal --workdir /tmp/aape_vqa

Real run: the maps of a COCO captioning run (experiments/aape_captioning.py) on VQAv2 val:

  python -m aape_jax.main --config experiments/aape_vqa.py --config.num_epochs=0 \
    --config.init=runs/aape_captioning --config.vqa.root=/data/coco --workdir runs/aape_vqa

Arguments: those of experiments/aape_captioning.py, and style (master|update_style).
metrics.json: `vqa_accuracy` (0-shot), `vqa_accuracy_{n}shot` (n = 0, 1, 2, 4),
`vqa_accuracy_finetuned`, and the LiMBeR baseline's under `limber_` (percentages).

Which numbers compare: style=master is the official VQAv2 evaluation (the server's); LiMBeR reported
numbers scored with the evaluation code's `update_style` branch (style=update_style). Published
LiMBeR numbers use GPT-J with CLIP RN50x16 features, which this project does not support (ViT CLIPs
only). Choices where the papers are silent: the in-context examples are the same n training
questions for every test question (their first human answer shown), an answer is cut at its first
line break and at the longest human answer's word count; fine-tuning uses the human answers as
targets (one drawn per step) with AAPE tokens from the generator.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import vqa


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return vqa.get_config(arg)
