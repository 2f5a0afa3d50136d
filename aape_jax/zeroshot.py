"""Zero-shot CLIP classification: jitted inference from Python, and a CLI.

    python -m aape_jax.zeroshot --clip PATH_OR_HUB_ID --images DIR_OR_FILES... \
        --classes "cat,dog,bird" [--templates FILE] [--topk 3]

Class weights are CLIP's prompt ensemble: each class's template embeddings
L2-normalised, averaged, normalised again (one template: just that one).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from aape_jax import clip as clip_lib
from aape_jax.clip.frozen import FrozenCLIP

DEFAULT_TEMPLATE = "a photo of a {}."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def l2_normalize(x: jax.Array | np.ndarray, axis: int = -1) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


def class_weights(model: FrozenCLIP, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Normalised ensemble text embedding per class: np.float32 [C, D]."""
    if not class_names:
        raise ValueError("no class names given")
    if not templates:
        raise ValueError("no templates given")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' for the class name")
    texts = [t.format(c) for c in class_names for t in templates]
    z = model.encode_text(model.tokenize(texts)).reshape(len(class_names), len(templates), -1)  # [C, T, D]
    return np.asarray(l2_normalize(l2_normalize(z).mean(axis=1)), dtype=np.float32)


@jax.jit
def scores(image_features: jax.Array, weights: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Image features [N, D], class weights [C, D] -> class probabilities [N, C]."""
    logits = logit_scale * l2_normalize(image_features) @ weights.T  # [N, C]
    return jax.nn.softmax(logits, axis=-1)


def list_images(inputs: Sequence[str]) -> list[str]:
    """Files as given, and the image files under each directory (recursively, sorted)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {item}")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"image path {item} does not exist")
    return paths


def predict(
    model: FrozenCLIP, images: Sequence[str], weights: np.ndarray, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Class probabilities np.float32 [N, C] for image paths/arrays, in batches."""
    out = []
    scale = jnp.float32(model.logit_scale)
    for start in tqdm(range(0, len(images), batch_size), desc="images", unit="batch",
                      disable=not progress or len(images) <= batch_size):
        features = model.encode_image(model.preprocess(images[start : start + batch_size]))
        out.append(np.asarray(scores(features, weights, scale)))
    return np.concatenate(out)


def read_templates(path: str | None) -> list[str]:
    if path is None:
        return [DEFAULT_TEMPLATE]
    with open(path) as f:
        templates = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not templates:
        raise ValueError(f"template file {path} holds no templates")
    return templates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True, help="HF-format checkpoint directory or hub id")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or directories")
    parser.add_argument("--classes", required=True, help="comma-separated class names")
    parser.add_argument("--templates", default=None, help="file with one '{}' template per line")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)

    class_names = [c.strip() for c in args.classes.split(",") if c.strip()]
    model = clip_lib.load(args.clip)
    weights = class_weights(model, class_names, read_templates(args.templates))
    paths = list_images(args.images)
    probs = predict(model, paths, weights, args.batch_size)
    k = min(args.topk, len(class_names))
    for path, p in zip(paths, probs):
        top = np.argsort(-p)[:k]
        print(f"{path}\t" + "\t".join(f"{class_names[i]}={p[i]:.4f}" for i in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
