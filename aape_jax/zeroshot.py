"""Zero-shot CLIP (or SigLIP) classification: jitted inference from Python, and a CLI.

    python -m aape_jax.zeroshot --clip PATH_OR_HUB_ID --images DIR_OR_FILES... \
        --classes "cat,dog,bird" [--templates FILE] [--topk 3] [--on_bad_image skip|fail] [--verbose]

Class weights are CLIP's prompt ensemble: each class's template embeddings
L2-normalised, averaged, normalised again (one template: just that one).
Probabilities are CLIP's softmax over the classes, or, for SigLIP (trained with
a sigmoid loss), each class's own `sigmoid(exp(scale) * cos + logit_bias)`, as
transformers' SigLIP examples read them: rows then need not sum to 1.

An image that cannot be decoded (not an image, truncated) is reported by path
and skipped (`--on_bad_image=skip`, the default): the others are classified,
a summary of the skipped files goes to stderr and the exit status is 1. With
`--on_bad_image=fail` the first one stops the run. Other mistakes (a missing
path, no class names, a bad template file) are one-line errors with exit
status 2 (`--verbose` adds the traceback).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from aape_jax import clip as clip_lib
from aape_jax import errors
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.errors import BadImageError, ConfigError
from aape_jax.numerics import l2_normalize
from aape_jax.prompts.templates import fill

DEFAULT_TEMPLATE = "a photo of a {}."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ON_BAD_IMAGE = ("skip", "fail")


def class_weights(model: FrozenCLIP, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Normalised ensemble text embedding per class: np.float32 [C, D]."""
    if not class_names:
        raise ConfigError("no class names given", hint='pass --classes "cat,dog,..."')
    if not templates:
        raise ConfigError("no templates given")
    for t in templates:
        if t.count("{}") != 1:
            raise ConfigError(f"template {t!r} must contain exactly one '{{}}' for the class name")
    texts = [t for c in class_names for t in fill(templates, c)]
    z = model.encode_text(model.tokenize(texts)).reshape(len(class_names), len(templates), -1)  # [C, T, D]
    return np.asarray(l2_normalize(l2_normalize(z).mean(axis=1)), dtype=np.float32)


def probabilities(logits: jax.Array, sigmoid: bool = False, logit_bias: jax.Array | float = 0.0) -> jax.Array:
    """Scaled cosines `exp(scale) * cos` [..., C] -> class probabilities: softmax over the classes (CLIP),
    or with `sigmoid` (SigLIP) each class's `sigmoid(logits + logit_bias)`."""
    return jax.nn.sigmoid(logits + logit_bias) if sigmoid else jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("sigmoid",))
def scores(image_features: jax.Array, weights: jax.Array, logit_scale: jax.Array, sigmoid: bool = False,
           logit_bias: jax.Array | float = 0.0) -> jax.Array:
    """Image features [N, D], class weights [C, D] -> class probabilities [N, C] (see `probabilities`)."""
    logits = logit_scale * l2_normalize(image_features) @ weights.T  # [N, C]
    return probabilities(logits, sigmoid, logit_bias)


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
                raise errors.DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {item}")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise errors.DataError(f"image path {item} does not exist")
    return paths


def preprocess_each(
    preprocess: Callable[[list], np.ndarray], items: Sequence, on_bad_image: str = "skip", offset: int = 0
) -> tuple[np.ndarray | None, list[int], list[tuple[str, str]]]:
    """Preprocesses `items` one by one: (pixels of the good ones, their indices, [(path, why)] of the bad ones).

    An item that cannot be decoded raises `BadImageError` naming it with
    `on_bad_image="fail"`; with "skip" it is left out, logged, and listed.
    `offset` is added to indices in labels of non-path items.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(f"on_bad_image is {on_bad_image!r}; choose 'skip' or 'fail'")
    pixels, good, bad = [], [], []
    for j, item in enumerate(items):
        try:
            pixels.append(preprocess([item]))
        except (ValueError, OSError) as e:  # undecodable, truncated, missing (load_image names the path)
            cause = e.__cause__ if e.__cause__ is not None else e
            label = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image #{offset + j}"
            if on_bad_image == "fail":
                raise BadImageError(label, str(cause), hint="use --on_bad_image=skip to classify the others") from e
            logging.warning("skipping %s: cannot decode it (%s)", label, cause)
            bad.append((label, str(cause)))
            continue
        good.append(j)
    return (np.concatenate(pixels) if pixels else None), good, bad


def predict(
    model: FrozenCLIP, images: Sequence[str], weights: np.ndarray, batch_size: int = 64, progress: bool = True,
    on_bad_image: str = "skip", skipped: list[tuple[str, str]] | None = None,
) -> np.ndarray:
    """Class probabilities np.float32 [N, C] for image paths/arrays, in batches.

    An image that cannot be decoded gets a row of NaN and is appended to
    `skipped` as (path, reason) (`on_bad_image="skip"`), or raises
    `BadImageError` (`"fail"`).
    """
    out = np.full((len(images), len(weights)), np.nan, dtype=np.float32)
    scale = jnp.float32(model.logit_scale)
    for start in tqdm(range(0, len(images), batch_size), desc="images", unit="batch",
                      disable=not progress or len(images) <= batch_size):
        pixels, good, bad = preprocess_each(model.preprocess, images[start : start + batch_size], on_bad_image,
                                            offset=start)
        if skipped is not None:
            skipped.extend(bad)
        if pixels is not None:
            features = model.encode_image(pixels)
            out[[start + j for j in good]] = np.asarray(
                scores(features, weights, scale, model.config.sigmoid, jnp.float32(model.logit_bias)))
    return out


def read_templates(path: str | None) -> list[str]:
    if path is None:
        return [DEFAULT_TEMPLATE]
    try:
        with open(path) as f:
            templates = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError as e:
        raise ConfigError(f"cannot read template file {path}: {e.strerror or e}") from e
    if not templates:
        raise ConfigError(f"template file {path} holds no templates")
    return templates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True, help="HF-format checkpoint directory or hub id")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or directories")
    parser.add_argument("--classes", required=True, help="comma-separated class names")
    parser.add_argument("--templates", default=None, help="file with one '{}' template per line")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--on_bad_image", choices=ON_BAD_IMAGE, default="skip",
                        help="an image that cannot be decoded: skip it (reported; exit 1) or stop (exit 2)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except Exception as e:
        code = errors.report(e, verbose=args.verbose, prog="zeroshot: error")
        if code is None:
            raise
        return code


def _run(args: argparse.Namespace) -> int:
    if args.topk < 1 or args.batch_size < 1:
        raise ConfigError(f"--topk and --batch_size must be >= 1, got {args.topk} and {args.batch_size}")
    class_names = [c.strip() for c in args.classes.split(",") if c.strip()]
    templates = read_templates(args.templates)
    paths = list_images(args.images)
    if not class_names:
        raise ConfigError("--classes names no class", hint='pass --classes "cat,dog,..."')
    try:
        model = clip_lib.load(args.clip)
    except (OSError, ValueError) as e:  # a missing or malformed checkpoint directory, an unknown hub id
        raise ConfigError(f"cannot load the CLIP {args.clip!r}: {errors.one_line(str(e))}",
                          hint="--clip takes a Hugging Face-format checkpoint directory or hub id") from e
    weights = class_weights(model, class_names, templates)
    skipped: list[tuple[str, str]] = []
    probs = predict(model, paths, weights, args.batch_size, on_bad_image=args.on_bad_image, skipped=skipped)
    bad = {path for path, _ in skipped}
    for path, p in zip(paths, probs):
        if path not in bad:  # a slice past the end is the whole: --topk above C prints every class
            print(f"{path}\t" + "\t".join(f"{class_names[i]}={p[i]:.4f}" for i in np.argsort(-p)[:args.topk]))
    sys.stdout.flush()
    if skipped:
        print(f"zeroshot: skipped {len(skipped)} of {len(paths)} image(s) that cannot be decoded:", file=sys.stderr)
        for path, why in skipped:
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
