r"""Linear probe (text-initialised), base-to-new generalisation (CoCoOp protocol), ViT-B/16, in the shared harness.

Launch (one dataset, one seed):

  python -m aape_jax.main \
    --config experiments/linear_probe_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 --config.dataset.root=$DATA \
    --workdir runs/linear_probe/caltech101/seed1

Offline check (tiny random CLIP, synthetic data; accuracies mean nothing):

  python -m aape_jax.main --config experiments/linear_probe_base2new.py:runlocal --workdir /tmp/linear_probe_runlocal

Published 11-dataset average to compare with (ViT-B/16, Base / New / H): none reported for base-to-new (a plain probe cannot score new classes).

Our choice: logits = exp(s) cos(f, t_c + delta_c), with t_c the zero-shot weight of "a photo of a
{{}}." and delta_c learned for the base classes by logistic regression (AdamW, weight decay);
new classes keep delta = 0, i.e. their zero-shot weights.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = classification.base2new(arg, "linear_probe")
    config.optim.name = "adamw"
    config.optim.learning_rate = 0.01
    config.optim.weight_decay = 1e-4
    config.num_epochs = 20
    return config
