r"""AAPE, base-to-new generalisation (CoCoOp protocol), ViT-B/16.

Launch (one dataset, one seed; a real CLIP checkpoint, CoOp data layout and a
CuPL prompt file):

  python -m aape_jax.main \
    --config experiments/aape_base2new.py:dataset=caltech101,shots=16,seed=1 \
    --config.clip=openai/clip-vit-base-patch16 \
    --config.dataset.root=$DATA --config.prompts.path=$CUPL/caltech101.json \
    --workdir runs/aape/caltech101/seed1

Offline default, in the toy world (a small CLIP pretrained here and cached per
machine; task toy_concepts or dataset=toy_shift; zero-shot CLIP printed beside):

  python -m aape_jax.main --config experiments/aape_base2new.py:toyworld --workdir /tmp/aape_toyworld

Pipeline check in seconds (tiny random CLIP, synthetic images; accuracies mean nothing):

  python -m aape_jax.main --config experiments/aape_base2new.py:runlocal --workdir /tmp/aape_runlocal

Arguments (comma-separated, `key=value`): dataset, shots, seed, combine
(token|feature), aggregator (attention|mean|random|mlp), runlocal, toyworld.

Expected numbers: AAPE's own base/new/H are not reachable here.
Compare with the published 11-dataset averages (ViT-B/16, Base/New/H):
CoCoOp 80.47/71.69/75.83, KgCoOp 80.73/73.60/77.00, CuPL 72.56/74.22/73.38,
PromptSRC 84.26/76.10/79.97 (PromptSRC README; ProText paper).

Choices where the paper is silent (all config fields, in
aape_jax/configs/classification.py): one cross-attention layer as aggregator; a
D -> D/16 -> D generator; the AAPE inserted as one token right after [SOS] of
"a photo of a {}." (`model.token_position`); CoCoOp's optimisation
(SGD, lr 0.002, batch 1 in CoCoOp; we use batch 32 with K=8 precomputed
augmented views per image); lambda = 1 (the paper reports robustness to it).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import classification


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return classification.base2new(arg, "aape")
