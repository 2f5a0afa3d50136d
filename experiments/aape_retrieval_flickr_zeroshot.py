r"""AAPE retrieval, zero-shot transfer: a COCO-trained generator evaluated on Flickr30k 1k test, no training.

Launch (after experiments/aape_retrieval_coco.py trained `runs/aape_retrieval/coco`):

  python -m aape_jax.main \
    --config experiments/aape_retrieval_flickr_zeroshot.py \
    --config.clip=openai/clip-vit-base-patch16 \
    --config.init=runs/aape_retrieval/coco \
    --config.eval.flickr30k_1k.root=$FLICKR/flickr30k-images \
    --workdir runs/aape_retrieval/flickr_zeroshot

`num_epochs = 0`: the latest checkpoint of `init` is evaluated as is (its
`model.*` must match the COCO run's; only the trainable tree is read). Zero-shot CLIP is
evaluated in the same harness (`zeroshot_*` keys). The same numbers come out of
the COCO run itself when it is given `flickr_root`.

Expected numbers: AAPE's are not reachable here; zero-shot CLIP ViT-L/14@336px
on Flickr30k 1k: R@1 88.0 (i2t) / 68.7 (t2i) (CLIP paper, Table 13).
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import retrieval


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    # The COCO run's model and optimizer, for the restore of its checkpoint.
    config = retrieval.build(retrieval.parse_args(arg, ("score", "aggregator", "seed")), dataset="coco")
    config.eval = ml_collections.ConfigDict()
    config.eval.flickr30k_1k = retrieval.data_spec("flickr30k", "test", max_captions=5)
    config.eval_primary = "flickr30k_1k"
    config.num_epochs = 0  # evaluate `init` without training
    return config
