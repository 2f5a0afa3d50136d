r"""AAPE, domain generalisation: 16-shot ImageNet (all 1000 classes) -> ImageNet-V2 / -Sketch / -A / -R.

  python -m aape_jax.main --config experiments/aape_domain_generalization.py:seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --config.prompts.path=$CUPL/imagenet.json --workdir runs/aape_dg/seed1

ImageNet-A and -R are tested on their 200 classes. metrics.json: `imagenet_acc`,
`imagenet_v2_acc`, `imagenet_sketch_acc`, `imagenet_a_acc`, `imagenet_r_acc`,
`target_mean_acc`. Published (ViT-B/16, source / V2 / S / A / R): CoOp 71.51 /
64.20 / 47.99 / 49.71 / 75.21; CoCoOp 71.02 / 64.07 / 48.75 / 50.63 / 76.18
(CoCoOp paper, Table 2, as we recall it: check
before citing). Baselines: `--config.method=coop` (etc.).

Offline: `...:runlocal` trains on the synthetic set and tests it as its own target.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification

TARGETS = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.transfer(arg, "aape", TARGETS)
