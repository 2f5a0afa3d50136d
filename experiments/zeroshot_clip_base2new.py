r"""Zero-shot CLIP, base-to-new generalisation (CoCoOp protocol), ViT-B/16, in the shared harness.

Launch (one dataset, one seed):

  python -m aape_jax.main \
    --config experiments/zeroshot_clip_base2new.py:dataset=caltech101,shots=16,seed=1,templates=single \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --workdir runs/zeroshot_clip/caltech101/seed1

Offline check (tiny random CLIP, synthetic data; accuracies mean nothing):

  python -m aape_jax.main --config experiments/zeroshot_clip_base2new.py:runlocal --workdir /tmp/zeroshot_clip_runlocal

Published 11-dataset average to compare with (ViT-B/16, Base / New / H): CLIP 69.34 / 74.22 / 71.70 (CoCoOp's table, hand-crafted prompt per dataset; read in the PromptSRC README).

No training. `templates=single` uses `config.model.template`; `templates=ensemble` the 80 ImageNet
templates of CLIP's notebook (class weight = mean of normalised template embeddings).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.base2new(arg, "zeroshot_clip")
