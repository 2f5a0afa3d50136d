r"""CoCoOp, base-to-new generalisation (CoCoOp protocol), ViT-B/16, in the shared harness.

Launch (one dataset, one seed):

  python -m aape_jax.main \
    --config experiments/cocoop_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --workdir runs/cocoop/caltech101/seed1

Offline check (tiny random CLIP, synthetic data; accuracies mean nothing):

  python -m aape_jax.main --config experiments/cocoop_base2new.py:runlocal --workdir /tmp/cocoop_runlocal

Published 11-dataset average to compare with (ViT-B/16, Base / New / H): CoCoOp 80.47 / 71.69 / 75.83 (CoCoOp paper; PromptSRC README).

4 context tokens from "a photo of a" plus a meta-net D -> D/16 -> W shift per image; every
(image, class) pair runs the text tower. CoCoOp trains with batch 1 for 10 epochs at lr 0.002;
we keep lr and epochs but use batch 32 (the data-parallel step needs batches divisible by the
devices), which averages 32 images' gradients per step.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.base2new(arg, "cocoop")
