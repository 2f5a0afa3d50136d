r"""AAPE for image captioning: LiMBeR's linear map into a frozen decoder, plus AAPE soft tokens.

Offline default (a tiny random CLIP and a tiny random GPT-J-style decoder written into the workdir,
the generated captioned set: 256 train / 40 test images of 1-3 coloured shapes with 5 captions
each; the scores come from random weights and mean nothing, they show the pipeline runs):

  python -m aape_jax.main --config experiments/aape_captioning.py:runlocal --workdir /tmp/aape_captioning

Real run (COCO Karpathy train -> COCO Karpathy test and NoCaps val; GPT-J 6B in bfloat16):

  python -m aape_jax.main --config experiments/aape_captioning.py \
    --config.dataset.root=/data/coco --config.eval.coco_karpathy_test.root=/data/coco \
    --config.eval.nocaps_val.root=/data/nocaps/val --workdir runs/aape_captioning

Arguments (comma-separated): method (aape|limber), dataset (synthetic|coco), image_input
(pooled|grid), aggregator, seed, runlocal. Shared config: aape_jax/configs/captioning.py.

metrics.json: `cider_d`, `bleu_4`, `meteor`, `clip_s`, `refclip_s` (x100, on `eval_primary`),
every set's prefixed with its name (NoCaps also `nocaps_val_in_*`, `_near_*`, `_out_*`), and the
LiMBeR baseline's, trained in the same harness (WORKDIR/limber), under `limber_`.

Expected numbers: none reachable here. Published captioning numbers (LiMBeR; AAPE's Table) use
GPT-J with CLIP RN50x16 grid features; this project's CLIP towers are ViTs (no ResNet CLIP), so
ours are comparable in protocol, not in value. CLIP-S / RefCLIP-S as published use CLIP ViT-B/32.

Choices where the papers are silent (config fields in aape_jax/configs/captioning.py):
- how AAPE enters LiMBeR (our reading): the AAPE, mapped linearly to `model.num_aape_tokens` (m = 1)
  soft tokens after the image tokens; in training it is the aggregator's summary of the image's
  OTHER captions (leave-one-out), at test time the generator's output from the image alone;
  loss = LM loss + lambda L_distill + L_agg.
- image input "pooled" (CLIP's projected feature -> k = 4 tokens) by default; "grid" maps each ViT
  patch token (LiMBeR maps its RN50x16 grid cell by cell).
- prompt "A picture of" (LiMBeR's) after the soft tokens, in training and at test time; captions
  cut at 40 tokens; greedy (runlocal) or beam search with 3 beams, at most 20 new tokens.
- AdamW, lr 5e-4, batch 64, 3 epochs, no augmentation (one view per image).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import captioning


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return captioning.get_config(arg)
