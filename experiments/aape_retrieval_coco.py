r"""AAPE retrieval: train on COCO 2014 (Karpathy train + restval), test on COCO 5k and, zero-shot, Flickr30k 1k.

Launch (a real CLIP checkpoint; COCO images + Karpathy `dataset_coco.json`):

  python -m aape_jax.main \
    --config experiments/aape_retrieval_coco.py:flickr_root=$FLICKR/flickr30k-images \
    --config.clip=openai/clip-vit-base-patch16 \
    --config.dataset.root=$COCO \
    --config.eval.coco_5k.root=$COCO \
    --workdir runs/aape_retrieval/coco

`$COCO` holds `train2014/`, `val2014/` and `dataset_coco.json` (or point
`--config.dataset.annotations` / `--config.eval.coco_5k.annotations` at it);
`$FLICKR/flickr30k-images` holds the Flickr30k jpgs and `dataset_flickr30k.json`
(or set `--config.eval.flickr30k_1k.annotations`). Without `flickr_root` only
COCO 5k is evaluated; `experiments/aape_retrieval_flickr_zeroshot.py` evaluates
the trained workdir on Flickr30k later, without training.

From TFDS instead of the folders (needs `pip install tensorflow-datasets
tensorflow` and `tfds build coco_captions`): add `source=tfds` to the config
arguments and `--config.dataset.root=DIR` (and `--config.eval.coco_5k.root=DIR`)
where the images are exported once.

Point sweeps at one `--config.feature_store=DIR`: image features and caption
embeddings are computed once per CLIP.

metrics.json: `i2t_r1 ... t2i_r10` and `zeroshot_*` on COCO 5k; every set's
twelve keys prefixed `coco_5k_` / `flickr30k_1k_`.

Expected numbers: AAPE's are not reachable here. Zero-shot CLIP in the CLIP
paper (Table 13, ViT-L/14@336px): COCO 5k R@1 58.4 (i2t) / 37.8 (t2i),
Flickr30k 1k 88.0 / 68.7; a ViT-B/16 scores lower. All choices where the paper
is silent are listed in experiments/aape_retrieval.py.
"""

from __future__ import annotations

import ml_collections

from aape_jax.configs import retrieval


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = retrieval.parse_args(arg, ("source", "score", "aggregator", "seed"), flickr_root="")
    config = retrieval.build(args, dataset="coco")
    if args.flickr_root:
        config.eval.flickr30k_1k = retrieval.data_spec("flickr30k", "test", max_captions=5)
        config.eval.flickr30k_1k.root = args.flickr_root
    return config
