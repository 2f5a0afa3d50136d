"""A small procedurally generated dataset that needs no download.

Each class is a coloured shape ("red circle", "blue square", ...): real English
words, so CLIP prompts such as "a photo of a red circle." make sense, and the
classes are separable by a tiny CNN/ViT, so end-to-end runs (features, training,
base-to-new evaluation) can be checked offline.  It is not trivial: the shape
sits at a random position, scale and rotation on a noisy textured background,
with colour jitter and shading.

Every image is drawn from its own generator seeded by (seed, split, label,
index within class), so an image does not depend on how many classes or images
were requested: ``make_dataset(num_classes=4)`` is a prefix (per class) of
``make_dataset(num_classes=10)``.

:func:`class_descriptions` gives CuPL-style descriptions per class, in CuPL's
JSON format ``{class name: [sentence, ...]}``, so the LLM-description code path
can be exercised on this dataset too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
from etils import epath

from aape_jax import atomic, storage
from aape_jax.data.types import Example, ImageDataset

__all__ = ["COLORS", "SHAPES", "CLASSNAMES", "MAX_CLASSES", "make_dataset", "class_descriptions",
           "write_class_descriptions"]

# Colour name -> base RGB.  Chosen far apart in RGB so colour jitter never makes
# two colours overlap; the background is kept mid-grey-ish and low-saturation so
# black and white shapes still stand out.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 60, 225),
    "green": (30, 170, 50),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")


def _class_table() -> list[str]:
    """The 16 class names in label order.

    The first 8 pair colour i with shape i; the next 8 pair colour i with
    shape i + 4, so every two classes differ in colour, in shape, or both, and
    small datasets (the first few classes) differ in both.
    """
    colors = list(COLORS)
    return [f"{colors[i]} {SHAPES[(i + offset) % 8]}" for offset in (0, 4) for i in range(8)]


CLASSNAMES: tuple[str, ...] = tuple(_class_table())
MAX_CLASSES = len(CLASSNAMES)

# Split ids only feed the seed; they are fixed numbers so adding a split later
# cannot change existing images.
_SPLIT_IDS = {"train": 0, "test": 1}
# Shapes are rasterised at this multiple of the output size and downsampled, for
# anti-aliased edges (hard edges would be an unrealistically easy cue).
_SUPERSAMPLE = 4
# Rotation is limited so that "square" never turns into "diamond" (which is a
# rhombus, not a rotated square, for the same reason).
_MAX_ROTATION_DEG = 25.0


# --------------------------------------------------------------------------- #
# Shape geometry
# --------------------------------------------------------------------------- #
def _regular_polygon(n: int, phase: float) -> np.ndarray:
    """Unit-radius regular n-gon vertices, [n, 2] (x, y), first vertex at `phase`."""
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=-1)


def _outline(shape: str) -> list[np.ndarray]:
    """Polygon(s) of a unit-size shape centred at 0, y pointing down (image axes).

    Returns a list of [k, 2] arrays; "ring" and "circle" are polygons with many
    vertices so everything goes through one rasterisation path.  A ring is two
    polygons: the outer disc, then the hole (drawn in background).
    """
    up = -math.pi / 2  # first vertex straight up in image coordinates
    if shape == "circle":
        return [_regular_polygon(64, 0.0)]
    if shape == "ring":
        return [_regular_polygon(64, 0.0), 0.55 * _regular_polygon(64, 0.0)]
    if shape == "square":
        return [0.8 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)]
    if shape == "triangle":
        # Centroid of the equilateral triangle sits a bit below its circumcentre
        # visually; shift down so it looks centred.
        return [_regular_polygon(3, up) + np.array([0.0, 0.15])]
    if shape == "star":
        outer = _regular_polygon(5, up)
        inner = 0.42 * _regular_polygon(5, up + math.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(10, 2)]
    if shape == "cross":
        a, b = 1.0, 0.3  # arm half-length, half-width
        return [np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                          [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]], dtype=np.float64)]
    if shape == "diamond":
        return [np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], dtype=np.float64)]
    if shape == "hexagon":
        return [_regular_polygon(6, 0.0)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size] coverage in [0, 1] of one randomly placed shape."""
    radius = rng.uniform(0.2, 0.36) * size
    # Keep the shape's bounding circle inside the image (with a small margin) so
    # the class is always visible.
    cx = rng.uniform(radius + 1, size - radius - 1)
    cy = rng.uniform(radius + 1, size - radius - 1)
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return draw_shape(shape, size, cx, cy, radius, rot)


def draw_shape(shape: str, size: int, cx: float, cy: float, radius: float, rot: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage mask float32 [size, size] in [0, 1] of `shape` at (cx, cy), rotated by `rot`."""
    big = size * _SUPERSAMPLE
    canvas = PIL.Image.new("L", (big, big), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    for k, poly in enumerate(_outline(shape)):
        pts = (poly @ rot.T * radius + np.array([cx, cy])) * _SUPERSAMPLE  # [k, 2]
        # Later polygons are holes (the ring's inside), so they erase.
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255 if k == 0 else 0)
    small = canvas.resize((size, size), resample=PIL.Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def noisy_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size, 3] low-saturation smooth noise plus fine grain, 0..255."""
    # Smooth blotches: a coarse random grid upsampled bicubically.
    grid = rng.uniform(70, 190, size=(5, 5, 3)).astype(np.float32)
    # Pull channels towards their mean: a desaturated backdrop keeps the shape's
    # colour the salient colour cue.
    grid = 0.7 * grid.mean(axis=-1, keepdims=True) + 0.3 * grid
    blotch = np.stack([np.asarray(PIL.Image.fromarray(grid[..., c], mode="F").resize(
        (size, size), resample=PIL.Image.Resampling.BICUBIC)) for c in range(3)], axis=-1)
    # Stripes at a random angle and frequency: texture that is neither the
    # class's shape nor its colour.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    freq = rng.uniform(0.15, 0.6)
    stripes = 12.0 * np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    grain = rng.normal(0.0, 10.0, size=(size, size, 3)).astype(np.float32)
    return blotch + stripes[..., None] + grain


def _render(color: str, shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [size, size, 3] image of `color` `shape`."""
    background = noisy_background(size, rng)
    mask = _shape_mask(shape, size, rng)[..., None]  # [H, W, 1]
    # Per-image colour jitter (small: colours must stay nameable) and a linear
    # shading ramp across the shape, so its pixels are not one flat value.
    tint = np.asarray(COLORS[color], dtype=np.float32) + rng.normal(0.0, 12.0, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    shade = 1.0 + gx * xx + gy * yy  # [H, W]
    fill = tint[None, None, :] * shade[..., None]
    fill = fill + rng.normal(0.0, 6.0, size=fill.shape).astype(np.float32)
    image = mask * fill + (1.0 - mask) * background
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def _split(split: str, num_classes: int, per_class: int, image_size: int, seed: int) -> list[Example]:
    """Examples of one split, ordered by label then index within the class."""
    examples = []
    for label in range(num_classes):
        color, shape = CLASSNAMES[label].split(" ")
        for k in range(per_class):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], label, k])
            index = label * per_class + k
            examples.append(Example(image=_render(color, shape, image_size, rng), label=label,
                                    key=f"synthetic/seed{seed}/{split}/{index:05d}"))
    return examples


def make_dataset(num_classes: int = 10, train_per_class: int = 16, test_per_class: int = 8, image_size: int = 48,
                 seed: int = 0) -> ImageDataset:
    """Builds the synthetic coloured-shapes dataset.

    Args:
      num_classes: number of classes, 1..16; labels follow :data:`CLASSNAMES`.
      train_per_class: training images per class.
      test_per_class: test images per class.
      image_size: side of the square uint8 RGB images.
      seed: the same seed always gives the same images (bit for bit).

    Returns:
      An ``ImageDataset`` named "synthetic" with empty ``val``; images are
      uint8 [image_size, image_size, 3] arrays and keys look like
      "synthetic/seed0/train/00017" (index over the split, label-major).
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if train_per_class < 0 or test_per_class < 0:
        raise ValueError(f"images per class must be >= 0, got train={train_per_class}, test={test_per_class}")
    if image_size < 16:
        # Below this the star, cross and hexagon are no longer recognisable.
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    return ImageDataset(name="synthetic", classnames=list(CLASSNAMES[:num_classes]),
                        train=_split("train", num_classes, train_per_class, image_size, seed), val=[],
                        test=_split("test", num_classes, test_per_class, image_size, seed))


# What each shape and colour looks like, for the description templates.
_SHAPE_FACTS: dict[str, tuple[str, str]] = {
    # shape: (what it is, a distinguishing detail)
    "circle": ("a round shape with no corners", "its edge curves evenly all the way around"),
    "square": ("a shape with four equal straight sides", "it has four right-angled corners"),
    "triangle": ("a shape with three straight sides", "it has three pointed corners"),
    "star": ("a shape with five pointed tips", "its points spread out from the centre"),
    "cross": ("a shape made of two bars crossing at right angles", "it looks like a plus sign"),
    "diamond": ("a tall rhombus standing on one point", "it has four slanted sides"),
    "hexagon": ("a shape with six equal straight sides", "it looks like a honeycomb cell"),
    "ring": ("a circle with a round hole in the middle", "it looks like a thick loop or a donut"),
}
_COLOR_FACTS: dict[str, str] = {
    "red": "the colour of a ripe tomato",
    "blue": "the colour of a clear sky",
    "green": "the colour of fresh grass",
    "yellow": "the colour of a lemon",
    "purple": "the colour of a grape",
    "orange": "the colour of an orange",
    "black": "the colour of coal",
    "white": "the colour of fresh snow",
}
_TEMPLATES: tuple[str, ...] = (
    "A {c} {s} is {what}, filled with a bright {c} colour.",
    "A {c} {s} is {what}; {detail}.",
    "The {c} {s} is coloured {c}, {color_fact}.",
    "You can recognise a {c} {s} because {detail} and it is {c}.",
    "A {c} {s} stands out against a grey, noisy background.",
    "A picture of a {c} {s} shows one {c} {s}, possibly tilted slightly.",
    "The {s} in the image is {what}, painted {c}.",
    "A {c} {s} can appear large or small, anywhere in the picture.",
)


def class_descriptions(classnames: Sequence[str]) -> dict[str, list[str]]:
    """CuPL-style descriptions: ``{class name: [sentence, ...]}`` (8 per class).

    Sentences come from fixed templates that mention the class's colour and
    shape, so they are deterministic and every one is about its own class.

    Raises:
      ValueError: a class name is not "<colour> <shape>" from :data:`COLORS`
        and :data:`SHAPES`.
    """
    out: dict[str, list[str]] = {}
    for name in classnames:
        parts = name.split(" ")
        if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in _SHAPE_FACTS:
            raise ValueError(
                f"class name {name!r} is not '<colour> <shape>' with colour in "
                f"{list(COLORS)} and shape in {list(SHAPES)}"
            )
        c, s = parts
        what, detail = _SHAPE_FACTS[s]
        out[name] = [t.format(c=c, s=s, what=what, detail=detail, color_fact=_COLOR_FACTS[c]) for t in _TEMPLATES]
    return out


def write_class_descriptions(path: str | os.PathLike, classnames: Sequence[str]) -> epath.Path:
    """Writes :func:`class_descriptions` as CuPL JSON to `path`; returns the path."""
    atomic.write_json(path, class_descriptions(classnames))
    return storage.path(path)
