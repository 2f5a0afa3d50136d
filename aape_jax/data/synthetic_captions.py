"""A procedurally generated captioned image set for offline retrieval runs.

Each image shows 1-3 coloured shapes (distinct colour/shape pairs from
`aape_jax.data.synthetic`'s palette and shapes) on the same noisy textured
background; its 5 captions describe the scene in varied phrasings, e.g. "a red
circle and a blue square on a grey background", "two shapes: a blue square and
a red circle". Every image and its captions come from a generator seeded by
(seed, split, index): deterministic, and a prefix of a larger set.
`captioned_scenes` returns the same images with the objects each one shows,
for scene-grounded tasks (`aape_jax.data.synthetic_vqa`).
"""

from __future__ import annotations

import math

import numpy as np

from aape_jax.data.captions import CaptionDataset, CaptionedImage
from aape_jax.data.synthetic import COLORS, SHAPES, draw_shape, noisy_background

__all__ = ["make_captioned_dataset", "captioned_scenes", "CAPTIONS_PER_IMAGE"]

CAPTIONS_PER_IMAGE = 5
_SPLIT_IDS = {"train": 0, "test": 1}
_NUMBERS = {1: "one", 2: "two", 3: "three"}


def _phrase(objects: list[tuple[str, str]]) -> str:
    names = [f"a {c} {s}" for c, s in objects]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _captions(objects: list[tuple[str, str]], rng: np.random.Generator) -> tuple[str, ...]:
    """5 distinct captions of the scene, each listing every object (in a shuffled order)."""
    n = len(objects)
    shape_word = "shape" if n == 1 else "shapes"
    templates = [
        "{p} on a grey background",
        "a picture of {p}",
        "{n} {w}: {p}",
        "an image showing {p} on a noisy backdrop",
        "{p}",
        "a drawing with {p}",
        "there is {p} in this picture",
    ]
    picked = rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False)
    out = []
    for t in picked:
        order = [objects[i] for i in rng.permutation(n)]
        out.append(templates[t].format(p=_phrase(order), n=_NUMBERS[n], w=shape_word))
    return tuple(out)


def _render_scene(objects: list[tuple[str, str]], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size, 3]: the shapes at non-overlapping-ish random places on the background."""
    image = noisy_background(size, rng)
    radius = size * (0.3 if len(objects) == 1 else 0.2)
    centres: list[tuple[float, float]] = []
    for color, shape in objects:
        for _ in range(20):  # rejection sampling; overlap is allowed when it does not fit
            cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
            if all(math.hypot(cx - x, cy - y) > 1.6 * radius for x, y in centres):
                break
        centres.append((cx, cy))
        angle = math.radians(rng.uniform(-25.0, 25.0))
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        mask = draw_shape(shape, size, cx, cy, radius, rot)[..., None]
        tint = np.asarray(COLORS[color], np.float32) + rng.normal(0.0, 12.0, size=3).astype(np.float32)
        image = mask * tint + (1.0 - mask) * image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _scene(split: str, index: int, image_size: int, seed: int) -> tuple[CaptionedImage, tuple[tuple[str, str], ...]]:
    """Image `index` of `split` with its objects; the one generator both public builders share.

    The draws (object count, objects, rendering, captions) happen in this fixed order from a generator
    seeded by (seed, split, index) alone, so every caller sees the same image bit for bit.
    """
    colors = list(COLORS)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    n = int(rng.integers(1, 4))
    pairs = rng.choice(len(colors) * len(SHAPES), size=n, replace=False)
    objects = [(colors[p // len(SHAPES)], SHAPES[p % len(SHAPES)]) for p in pairs]
    image = CaptionedImage(image=_render_scene(objects, image_size, rng), captions=_captions(objects, rng),
                           key=f"synthetic_captions/seed{seed}/{split}/{index:05d}")
    return image, tuple(objects)


def _split(split: str, count: int, image_size: int, seed: int) -> list[CaptionedImage]:
    return [_scene(split, index, image_size, seed)[0] for index in range(count)]


def captioned_scenes(split: str, count: int, image_size: int = 48,
                     seed: int = 0) -> list[tuple[CaptionedImage, tuple[tuple[str, str], ...]]]:
    """The first `count` images of `split`, each with the (colour, shape) objects it shows.

    The images are exactly `make_captioned_dataset(...)`'s for the same split, index, size and seed
    (same pixels, captions and keys); the objects are in drawing order, e.g.
    `(("red", "circle"), ("blue", "square"))`. Scene-grounded tasks (the synthetic VQA set) build on it.

    Raises:
      ValueError: for a split other than "train" or "test", a negative count or an image_size < 24.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split {split!r} is not one of {sorted(_SPLIT_IDS)}")
    if count < 0:
        raise ValueError(f"image count must be >= 0, got {split}={count}")
    if image_size < 24:
        raise ValueError(f"image_size must be >= 24 (three shapes must stay recognisable), got {image_size}")
    return [_scene(split, index, image_size, seed) for index in range(count)]


def make_captioned_dataset(num_train: int = 256, num_test: int = 40, image_size: int = 48,
                           seed: int = 0) -> CaptionDataset:
    """Builds the captioned set: `num_train` / `num_test` images, 5 captions each, empty val.

    The same seed always gives the same images and captions (bit for bit).
    """
    if num_train < 0 or num_test < 0:
        raise ValueError(f"image counts must be >= 0, got train={num_train}, test={num_test}")
    if image_size < 24:
        raise ValueError(f"image_size must be >= 24 (three shapes must stay recognisable), got {image_size}")
    return CaptionDataset(name="synthetic_captions", train=_split("train", num_train, image_size, seed), val=[],
                          test=_split("test", num_test, image_size, seed))
