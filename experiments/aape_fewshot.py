r"""AAPE, few-shot classification on all classes of one dataset, ViT-B/16.

  python -m aape_jax.main --config experiments/aape_fewshot.py:dataset=dtd,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --config.prompts.path=$CUPL/dtd.json --workdir runs/aape_fewshot/dtd/seed1

Offline: `python -m aape_jax.main --config experiments/aape_fewshot.py:runlocal --workdir /tmp/aape_fewshot`.
Any baseline runs the same protocol with `--config.method=coop` (etc.).
metrics.json: `all_acc` (accuracy over all classes) and `all_per_class_acc`.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = classification.base2new(arg, "aape")
    config.protocol = "fewshot"
    return config
