r"""KgCoOp, base-to-new generalisation (CoCoOp protocol), ViT-B/16, in the shared harness.

Launch (one dataset, one seed):

  python -m aape_jax.main \
    --config experiments/kgcoop_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --workdir runs/kgcoop/caltech101/seed1

Offline check (tiny random CLIP, synthetic data; accuracies mean nothing):

  python -m aape_jax.main --config experiments/kgcoop_base2new.py:runlocal --workdir /tmp/kgcoop_runlocal

Published 11-dataset average to compare with (ViT-B/16, Base / New / H): KgCoOp 80.73 / 73.60 / 77.00 (KgCoOp paper; PromptSRC README).

CoOp plus lambda * mean_c ||w_c - w_c^clip||^2 between the learned and the hand-crafted
("a photo of a {{}}.") normalised class weights, lambda = 8.0 (`config.baseline.kg_weight`).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.base2new(arg, "kgcoop")
