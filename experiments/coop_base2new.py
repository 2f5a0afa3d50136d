r"""CoOp, base-to-new generalisation (CoCoOp protocol), ViT-B/16, in the shared harness.

Launch (one dataset, one seed):

  python -m aape_jax.main \
    --config experiments/coop_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --workdir runs/coop/caltech101/seed1

Offline check (tiny random CLIP, synthetic data; accuracies mean nothing):

  python -m aape_jax.main --config experiments/coop_base2new.py:runlocal --workdir /tmp/coop_runlocal

Published 11-dataset average to compare with (ViT-B/16, Base / New / H): CoOp 82.69 / 63.22 / 71.66 (CoCoOp's table; PromptSRC README).

Unified context of 4 tokens initialised from "a photo of a" (`config.baseline.ctx_init`), prompt
`[SOS] ctx {class}. [EOT]`; SGD lr 0.002, cosine, 1 warm-up epoch at 1e-5 as in CoOp; 10 epochs,
batch 32 (our choice for base-to-new).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.base2new(arg, "coop")
