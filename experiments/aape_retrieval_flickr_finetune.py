r"""AAPE retrieval, fine-tuned: start from the COCO-trained learner, train on Flickr30k (Karpathy train), test 1k.

Launch (after experiments/aape_retrieval_coco.py trained `runs/aape_retrieval/coco`):

  python -m aape_jax.main \
    --config experiments/aape_retrieval_flickr_finetune.py \
    --config.clip=openai/clip-vit-base-patch16 \
    --config.init=runs/aape_retrieval/coco \
    --config.dataset.root=$FLICKR/flickr30k-images \
    --config.eval.flickr30k_1k.root=$FLICKR/flickr30k-images \
    --workdir runs/aape_retrieval/flickr_finetune

`$FLICKR/flickr30k-images` holds the jpgs and `dataset_flickr30k.json` (or set
`--config.dataset.annotations` and `--config.eval.flickr30k_1k.annotations`).
Without `init` the learner is trained on Flickr30k from scratch. Only the
trainable tree comes from `init` (its `model.*` must match the COCO run's; a
tree that does not is an error naming the keys); optimizer state, step counter and learning-rate
schedule start afresh, so the optimizer may differ (29,000 training images, 3 epochs, lr 2e-4: our choice).

Expected numbers: AAPE's are not reachable here; zero-shot CLIP ViT-L/14@336px
on Flickr30k 1k: R@1 88.0 (i2t) / 68.7 (t2i) (CLIP paper, Table 13).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import retrieval


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = retrieval.build(retrieval.parse_args(arg, ("score", "aggregator", "seed")), dataset="flickr30k")
    config.optim.learning_rate = 2e-4  # fine-tuning: a smaller peak than the COCO run's 5e-4
    config.num_epochs = 3
    return config
