r"""AAPE, cross-dataset transfer: 16-shot ImageNet (all 1000 classes) -> the other ten datasets.

  python -m aape_jax.main --config experiments/aape_cross_dataset.py:seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --config.prompts.path=$CUPL/imagenet.json --workdir runs/aape_xd/seed1

Each target is tested on all its classes with its own class names (the
template is ImageNet's). metrics.json: `imagenet_acc`, `<target>_acc` for
each target, `target_mean_acc`. Published target averages (ViT-B/16): CoOp
63.88, CoCoOp 65.74 (CoCoOp paper, Table 3, as we recall it:
check before citing). Baselines: `--config.method=...`;
CuPL needs each target's prompt file in `--config.prompts.target_paths.<name>=FILE`.

Offline: `...:runlocal` trains on the synthetic set and tests it as its own target.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification

TARGETS = ["caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft", "sun397",
           "dtd", "eurosat", "ucf101"]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.transfer(arg, "aape", TARGETS)
