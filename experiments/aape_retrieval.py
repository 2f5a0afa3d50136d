r"""AAPE for image-text retrieval (captions as per-image prompts), Recall@K both ways.

Offline default (tiny random CLIP written into the workdir, a procedurally
generated captioned image set: 256 train / 40 test images of 1-3 coloured
shapes with 5 generated captions each; its recalls come from random weights
and mean nothing, they show the pipeline runs, ~1 minute on 2 CPU cores):

  python -m aape_jax.main --config experiments/aape_retrieval.py:runlocal --workdir /tmp/aape_retrieval

Real runs: experiments/aape_retrieval_coco.py (train on COCO, test COCO 5k and
Flickr30k 1k), aape_retrieval_flickr_zeroshot.py (a COCO-trained generator on
Flickr30k 1k, no training), aape_retrieval_flickr_finetune.py (fine-tuned on
Flickr30k train). Their shared config is aape_jax/configs/retrieval.py;
arguments (comma-separated): dataset (synthetic|coco|flickr30k), source
(karpathy|tfds), score (gate|sum), aggregator (attention|mean|random|mlp),
seed, runlocal.

metrics.json: `i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10` (AAPE, on
`eval_primary`), the same six prefixed `zeroshot_` (zero-shot CLIP, same
harness), and every evaluation set's twelve prefixed with its name.

Expected numbers: AAPE's own retrieval numbers are not reachable here. For
zero-shot CLIP, the CLIP paper (Radford et al. 2021, Table 13) reports for its
largest model (ViT-L/14@336px): COCO 5k R@1 58.4 (image->text) / 37.8
(text->image); Flickr30k 1k 88.0 / 68.7. We quote no ViT-B/16 numbers: none
we could verify here.

Choices where the paper is silent (config fields in aape_jax/configs/retrieval.py):
- `model.score`: how the AAPE enters the score. The image side becomes
  e(x) = n(q + gamma n(a)), q = n(f(x)), a = h(q); texts keep their plain CLIP
  embeddings. "gate" (default): gamma is a learned scalar initialised at
  `model.alpha`; "sum": gamma = `model.alpha`, fixed. gamma = 0 is zero-shot CLIP.
- task loss: symmetric InfoNCE at CLIP's temperature between e(x) and one of
  x's captions drawn at random per example and step; + lambda L_distill + L_agg
  as in classification (the aggregator summarises x's captions, CLIP reward).
- all of an image's captions are its training prompts; evaluation keeps the
  first 5 per image (the standard 25,000 COCO / 5,000 Flickr test captions).
- Karpathy `restval` is training data (113,287 COCO training images).
- ties in ranking count against the model ("pessimistic", `eval_ties`).
- AdamW, lr 5e-4, batch 256, 5 epochs, 2 precomputed augmented views per image.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import retrieval


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return retrieval.get_config(arg)
