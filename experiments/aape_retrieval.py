r"""AAPE for image-text retrieval (captions as per-image prompts), Recall@K both ways.

Offline default (tiny random CLIP written into the workdir, a procedurally
generated captioned image set: 256 train / 40 test images of 1-3 coloured
shapes with 5 generated captions each; its recalls come from random weights
and mean nothing, they show the pipeline runs, ~1 minute on 2 CPU cores):

  python -m aape_jax.main --config experiments/aape_retrieval.py:runlocal --workdir /tmp/aape_retrieval

Real runs: experiments/aape_retrieval_coco.py (train on COCO, test COCO 5k and
Flickr30k 1k), aape_retrieval_flickr_zeroshot.py (a COCO-trained generator on
Flickr30k 1k, no training), aape_retrieval_flickr_finetune.py (fine-tuned on
Flickr30k train). This file is their base; arguments (comma-separated):
dataset (synthetic|coco|flickr30k), source (karpathy|tfds), score (gate|sum),
aggregator (attention|mean|random|mlp), seed, runlocal.

metrics.json: `i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10` (AAPE, on
`eval_primary`), the same six prefixed `zeroshot_` (zero-shot CLIP, same
harness), and every evaluation set's twelve prefixed with its name.

Expected numbers: AAPE's own retrieval numbers are not reachable here. For
zero-shot CLIP, the CLIP paper (Radford et al. 2021, Table 13) reports for its
largest model (ViT-L/14@336px): COCO 5k R@1 58.4 (image->text) / 37.8
(text->image); Flickr30k 1k 88.0 / 68.7. We quote no ViT-B/16 numbers: none
we could verify here.

Choices where the paper is silent (config fields below):
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

KNOWN_ARGS = {"dataset", "source", "score", "aggregator", "seed", "runlocal"}

# Test split sizes of the standard protocol, for the names of the evaluation sets.
EVAL_NAMES = {"synthetic": "synthetic_test", "coco": "coco_5k", "flickr30k": "flickr30k_1k"}


def parse_args(arg: str, known: set[str] = KNOWN_ARGS) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        out[key] = value if sep else True
    unknown = set(out) - known
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: {sorted(known)}")
    return out


def data_spec(name: str, split: str, *, source: str = "karpathy", max_captions: int = 0,
              runlocal: bool = False) -> ml_collections.ConfigDict:
    """One captioned data set: where it is and which split."""
    spec = ml_collections.ConfigDict()
    spec.name = name  # "synthetic" | "coco" | "flickr30k"
    # "karpathy": image folders + Karpathy split JSON; "tfds": TFDS coco_captions (needs tensorflow-datasets + TF).
    spec.source = source
    # COCO: the folder holding train2014/ and val2014/; Flickr30k: the flickr30k-images folder.
    # (tfds: exported images are written under ROOT/tfds_images when ROOT is set.)
    spec.root = ""
    spec.annotations = ""  # Karpathy JSON (empty: ROOT/dataset_<name>.json)
    spec.tfds_data_dir = ""  # TFDS data_dir (empty: TFDS' default)
    spec.check_files = True  # check that every image file exists before anything runs
    spec.split = split  # "train" (Karpathy train + restval) | "val" | "test"
    spec.max_captions = max_captions  # keep each image's first N captions (0: all)
    # "synthetic" only: images in the generated train and test splits.
    spec.synthetic_train = 256 if runlocal else 2048
    spec.synthetic_test = 40
    return spec


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_args(arg)
    runlocal = bool(args.get("runlocal", False))
    dataset = str(args.get("dataset", "synthetic" if runlocal else "coco"))
    source = str(args.get("source", "karpathy"))
    config = ml_collections.ConfigDict()
    config.task = "retrieval"  # dispatched by aape_jax.main to aape_jax.retrieval.train

    # Frozen CLIP: an HF-format directory or hub id. Empty: a random CLIP of
    # `random_clip_geometry` is written to WORKDIR/random_clip and loaded from there.
    config.clip = "" if runlocal else "openai/clip-vit-base-patch16"
    config.random_clip_geometry = "tiny"  # used only when `clip` is empty ("tiny" | "vit-b-16")
    config.clip_dtype = "float32"  # compute dtype of the frozen towers ("bfloat16" on TPU/GPU)

    # Training data: all of an image's captions are its prompts.
    config.dataset = data_spec(dataset, "train", source=source, max_captions=0, runlocal=runlocal)
    config.dataset.num_views = 2  # K augmented views per training image, precomputed

    # Evaluation sets {name: data spec}; each gets AAPE and zero-shot CLIP R@1/5/10 both ways.
    config.eval = ml_collections.ConfigDict()
    config.eval[EVAL_NAMES[dataset]] = data_spec(dataset, "test", source=source, max_captions=5, runlocal=runlocal)
    config.eval_primary = EVAL_NAMES[dataset]  # whose metrics also go unprefixed into metrics.json
    config.eval_block = 1024  # image rows per similarity block (block x n_captions scores in memory)
    config.eval_ties = "pessimistic"  # "pessimistic" (ties count against) | "optimistic"
    config.eval_batch_size = 256 if not runlocal else 40  # images per embedding batch

    config.model = ml_collections.ConfigDict()
    config.model.aggregator = str(args.get("aggregator", "attention"))  # attention | mean | random | mlp
    config.model.num_heads = 8 if not runlocal else 4  # attention aggregator heads
    config.model.aggregator_hidden = 512  # MLP aggregator width
    config.model.generator_hidden = 32 if not runlocal else 16  # generator bottleneck (D/16 for ViT-B/16)
    config.model.score = str(args.get("score", "gate"))  # "gate" (learned gamma) | "sum" (gamma = alpha)
    config.model.alpha = 0.5  # gamma in e = n(q + gamma n(a)): fixed ("sum") or its initial value ("gate")

    config.loss = ml_collections.ConfigDict()
    config.loss.distill_weight = 1.0  # lambda
    config.loss.aggregator_weight = 1.0  # weight of the aggregator's CLIP-reward loss

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"  # "sgd" | "adamw" (keep it equal to the `init` run's for fine-tuning)
    config.optim.learning_rate = 5e-4 if not runlocal else 3e-3
    config.optim.momentum = 0.9  # SGD only
    config.optim.weight_decay = 1e-4
    config.optim.warmup_epochs = 1  # linear warmup from warmup_lr to learning_rate, then cosine to 0
    config.optim.warmup_lr = 1e-6
    config.optim.grad_clip = 1.0  # global-norm clipping (0: off)

    config.batch_size = 256 if not runlocal else 32  # global, split over the `data` mesh axis
    config.num_epochs = 5 if not runlocal else 12  # 0: evaluate `init` without training
    config.seed = int(args.get("seed", 1))  # init, augmentation, data order, caption draws
    config.parallelism = "jit"  # "jit" (sharded jit, default) | "pmap" (same parameters, legacy API)
    config.num_devices = 0  # devices on the data axis (0: all)

    # On-disk text/image feature store; point runs on the same data at one directory (empty: WORKDIR/feature_store).
    config.feature_store = ""
    config.checkpoint_keep = 3  # checkpoints preserved (LatestN)
    config.checkpoint_every_epochs = 1
    config.init = ""  # a workdir whose latest checkpoint initialises the trainable tree (if none to resume)
    return config
