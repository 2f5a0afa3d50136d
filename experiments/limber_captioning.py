r"""The LiMBeR baseline for image captioning: frozen CLIP features, one trained linear map into a
frozen decoder's input embeddings (Merullo et al., ICLR 2023), in this project's harness.

Offline default (tiny random CLIP and decoder, the generated captioned set; scores mean nothing):

  python -m aape_jax.main --config experiments/limber_captioning.py:runlocal --workdir /tmp/limber_captioning

Everything else as experiments/aape_captioning.py (method=limber there): the same data, prompt,
decoding and metrics; `experiments/aape_captioning.py` already trains this baseline beside AAPE
(`limber_` keys).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import captioning
from aape_jax.configs.args import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_arg(arg, **{k: v for k, v in captioning.ARGS.items() if k != "method"})
    return captioning.build(args, method="limber")
