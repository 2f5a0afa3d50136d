r"""CuPL (LLM-description ensemble), base-to-new generalisation (CoCoOp protocol), ViT-B/16, in the shared harness.

Launch (one dataset, one seed):

  python -m aape_jax.main \
    --config experiments/cupl_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --config.prompts.path=$CUPL/caltech101.json \
    --workdir runs/cupl/caltech101/seed1

Offline check (tiny random CLIP, synthetic data; accuracies mean nothing):

  python -m aape_jax.main --config experiments/cupl_base2new.py:runlocal --workdir /tmp/cupl_runlocal

Published 11-dataset average to compare with (ViT-B/16, Base / New / H): CuPL 72.56 / 74.22 / 73.38 (ProText paper).

No training. Class weight = mean of the class's normalised description embeddings (CuPL's
"base" prompts only, no templates mixed in).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.base2new(arg, "cupl")
