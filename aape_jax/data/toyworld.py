"""The toy world: a procedurally generated image-caption distribution where the right answer is known.

No pretrained CLIP can be downloaded where this project runs, so a small CLIP
is pretrained on this world (`aape_jax.toyworld`), and few-shot tasks are set
in it that mimic the paper's premise. Everything is deterministic per seed.

Scenes hold one or two objects. An object has a colour (:data:`COLORS`), a
shape (:data:`SHAPES`), a size (small | large), a texture (plain | striped |
spotted) and a position; the background is a noisy, low-saturation texture.
Captions describe a scene in varied English ("a small red circle on the left.",
"there is a striped blue star in the picture.", "two green squares."), all in
the real CLIP vocabulary. Rarely (:data:`RARE_WORD_RATE` of the mentions) a
caption uses a less common word for a colour or a shape ("crimson" for red,
"disc" for circle): pretraining sees those words, but seldom.

Downstream tasks (:data:`TASKS`), each an `ImageDataset` with train/val/test
and CuPL-format descriptions (:func:`task_descriptions`):

* ``toy_concepts`` (under-represented concepts): classes are colour x shape
  objects named with words pretraining never saw (bird names: "kestrel" is a
  yellow square), as fine-grained or satellite class names are rare in CLIP's
  pretraining; the descriptions say what they look like in common words, and,
  like LLM output, some are vague, redundant or irrelevant.
* ``toy_shift`` (domain shift): plainly named colour x shape classes ("red
  circle") drawn as outlines, a style pretraining never shows.

The two tasks use complementary halves of the 48 colour x shape combinations,
in a fixed shuffled order, so that base and new classes (first and second half,
CoCoOp protocol) both mix colours and shapes. The world's parameters were set
once, before any method ran on it, and are not tuned for any method.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import pickle
import subprocess
import sys
import numpy as np
import PIL.Image
from etils import epath

from aape_jax import atomic, storage
from aape_jax.data import synthetic
from aape_jax.data.synthetic import draw_shape
from aape_jax.data.types import Example, ImageDataset

__all__ = [
    "COLORS", "SHAPES", "RARE_COLOR", "RARE_SHAPE", "WORLD_VERSION", "CLASSES", "TASKS", "IMAGE_SIZE",
    "CONCEPT_NAMES", "Scene", "ObjectSpec", "sample_scene", "render_scene", "caption", "zero_shot_set", "make_task",
    "class_names", "task_descriptions", "write_task_descriptions", "task_fingerprint",
]

# Bump when anything below changes what an image or caption looks like: caches key on it.
WORLD_VERSION = 1
IMAGE_SIZE = 32  # the small CLIP's resolution; every renderer takes any size >= 16

# The synthetic set's colours (far apart in RGB), in this world's label order.
COLORS: dict[str, tuple[int, int, int]] = {
    c: synthetic.COLORS[c] for c in ("red", "green", "blue", "yellow", "orange", "purple", "black", "white")}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
PLURALS = {"cross": "crosses"}
SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "spotted")
# The less common words: in pretraining captions with probability RARE_WORD_RATE per mention.
RARE_COLOR = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "orange": "amber",
              "purple": "violet", "black": "ebony", "white": "ivory"}
RARE_SHAPE = {"circle": "disc", "square": "tile", "triangle": "wedge", "star": "starburst", "cross": "plus",
              "ring": "hoop"}
RARE_WORD_RATE = 0.01
TWO_OBJECT_RATE = 0.2  # scenes with a second object (half of them a twin of the first)

# Every colour x shape class, colour-major: what zero-shot pretraining is scored on.
CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)

# Fixed numbers that only feed seeds, so adding a stream never changes another's images.
_STREAMS = {"pretrain": 0, "heldout": 1, "train": 2, "val": 3, "test": 4}
_TASK_IDS = {"toy_concepts": 10, "toy_shift": 11}
# Images per class in each split of a task: few-shot draws (up to 16 shots) come from `train`.
SPLIT_SIZES = {"train": 24, "val": 8, "test": 25}
TASKS = tuple(_TASK_IDS)
# Label order of both tasks: one fixed shuffle of the 48 combinations, split in two halves.
TASK_CLASSES: dict[str, list[tuple[str, str]]] = {
    task: [CLASSES[i] for i in half]
    for task, half in zip(TASKS, np.split(np.random.default_rng(20241).permutation(len(CLASSES)), 2))}


# toy_concepts' class names, in label order: bird names, words no pretraining caption contains.
CONCEPT_NAMES: tuple[str, ...] = (
    "kestrel", "heron", "plover", "finch", "wren", "lark", "thrush", "robin", "sparrow", "swallow", "magpie",
    "falcon", "osprey", "puffin", "pelican", "egret", "ibis", "stork", "curlew", "dunlin", "godwit", "avocet",
    "bittern", "warbler",
)


def class_names(task: str) -> list[str]:
    """A task's class names in label order ("kestrel", ... or "red circle", ...)."""
    if task == "toy_concepts":
        return list(CONCEPT_NAMES[: len(TASK_CLASSES[task])])
    return [f"{c} {s}" for c, s in TASK_CLASSES[task]]


# --------------------------------------------------------------------------- scenes
class ObjectSpec:
    """One object of a scene (positions in [0, 1] image coordinates)."""

    __slots__ = ("color", "shape", "size", "texture", "x", "y", "radius")

    def __init__(self, color: str, shape: str, size: str, texture: str, x: float, y: float, radius: float):
        self.color, self.shape, self.size, self.texture = color, shape, size, texture
        self.x, self.y, self.radius = x, y, radius

    def __repr__(self) -> str:
        return f"ObjectSpec({self.size} {self.texture} {self.color} {self.shape} at ({self.x:.2f}, {self.y:.2f}))"


Scene = list[ObjectSpec]


def _place(rng: np.random.Generator, size: str, region: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """(x, y, radius) of an object inside `region` = (x0, y0, x1, y1), all fractions of the image side."""
    x0, y0, x1, y1 = region
    span = min(x1 - x0, y1 - y0)
    radius = span * (rng.uniform(0.2, 0.27) if size == "small" else rng.uniform(0.3, 0.4))
    x = rng.uniform(x0 + radius + 0.02, x1 - radius - 0.02)
    y = rng.uniform(y0 + radius + 0.02, y1 - radius - 0.02)
    return x, y, radius


def _object(rng: np.random.Generator, color: str, shape: str, region) -> ObjectSpec:
    size = SIZES[rng.integers(len(SIZES))]
    texture = TEXTURES[rng.choice(3, p=[0.7, 0.15, 0.15])]
    return ObjectSpec(color, shape, size, texture, *_place(rng, size, region))


def sample_scene(rng: np.random.Generator, color: str | None = None, shape: str | None = None,
                 single: bool = False) -> Scene:
    """A random scene; `color`/`shape` fix the first object's, `single` forbids a second object."""
    color = color or list(COLORS)[rng.integers(len(COLORS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    if single or rng.random() >= TWO_OBJECT_RATE:
        return [_object(rng, color, shape, (0.0, 0.0, 1.0, 1.0))]
    # Two objects side by side (or one above the other), each in its half.
    vertical = rng.random() < 0.5
    halves = [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)] if vertical else [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    first = _object(rng, color, shape, halves[0])
    if rng.random() < 0.5:  # a twin: "two red circles"
        second = _object(rng, color, shape, halves[1])
        second.texture, second.size = first.texture, first.size
        second.x, second.y, second.radius = _place(rng, first.size, halves[1])
    else:
        while True:
            c2 = list(COLORS)[rng.integers(len(COLORS))]
            s2 = SHAPES[rng.integers(len(SHAPES))]
            if (c2, s2) != (color, shape):
                break
        second = _object(rng, c2, s2, halves[1])
    return [first, second] if rng.random() < 0.5 else [second, first]


# --------------------------------------------------------------------------- rendering
def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size, 3] in 0..255: smooth low-saturation blotches, faint stripes and grain."""
    grid = rng.uniform(70, 190, size=(4, 4, 3)).astype(np.float32)
    grid = 0.7 * grid.mean(axis=-1, keepdims=True) + 0.3 * grid  # desaturated: object colours stay salient
    blotch = np.stack([np.asarray(PIL.Image.fromarray(grid[..., c], mode="F").resize(
        (size, size), resample=PIL.Image.Resampling.BICUBIC)) for c in range(3)], axis=-1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, math.pi)
    stripes = rng.uniform(0, 10) * np.sin(rng.uniform(4, 20) * (xx * math.cos(theta) + yy * math.sin(theta)))
    grain = rng.normal(0.0, rng.uniform(2, 10), size=(size, size, 3)).astype(np.float32)
    return blotch + stripes[..., None] + grain


def _border(shape: str, size: int, cx: float, cy: float, radius: float, rot: np.ndarray) -> np.ndarray:
    return np.clip(draw_shape(shape, size, cx, cy, radius, rot) - draw_shape(shape, size, cx, cy, 0.62 * radius, rot),
                   0.0, 1.0)


def _outline_mask(shape: str, size: int, cx: float, cy: float, radius: float, rot: np.ndarray) -> np.ndarray:
    """Coverage [size, size] of the shape's border only (the domain-shift style)."""
    if shape == "ring":  # the outer edge and the hole's edge
        return np.clip(_border("circle", size, cx, cy, radius, rot)
                       + _border("circle", size, cx, cy, 0.55 * radius, rot), 0.0, 1.0)
    return _border(shape, size, cx, cy, radius, rot)


def _fill(obj: ObjectSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size, 3]: the object's colour with jitter, shading and its texture."""
    tint = np.asarray(COLORS[obj.color], np.float32) + rng.normal(0.0, 12.0, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    fill = tint * (1.0 + gx * (xx - obj.x) + gy * (yy - obj.y))[..., None]
    if obj.texture != "plain":
        # Pattern colour: the tint pulled towards mid grey, so the texture never reads as another colour.
        pattern = 0.55 * tint + 0.45 * 128.0
        if obj.texture == "striped":
            theta = rng.uniform(0, math.pi)
            period = obj.radius * rng.uniform(0.5, 0.7)
            phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
            on = (np.floor(phase * 2) % 2 == 0)
        else:
            step = obj.radius * 0.6
            gx_, gy_ = (xx - obj.x) / step, (yy - obj.y) / step
            on = ((gx_ - np.round(gx_)) ** 2 + (gy_ - np.round(gy_)) ** 2) < 0.09
        fill = np.where(on[..., None], pattern, fill)
    return fill + rng.normal(0.0, 6.0, size=fill.shape).astype(np.float32)


def render_scene(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE, style: str = "filled") -> np.ndarray:
    """uint8 [size, size, 3] image of `scene`; `style` "filled" (the world) or "outline" (the shift)."""
    if size < 16:
        raise ValueError(f"image size must be >= 16, got {size}")
    if style not in ("filled", "outline"):
        raise ValueError(f"style must be 'filled' or 'outline', got {style!r}")
    image = _background(size, rng)
    for obj in scene:
        angle = math.radians(rng.uniform(-20.0, 20.0))
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        cx, cy, r = obj.x * size, obj.y * size, obj.radius * size
        draw = _outline_mask if style == "outline" else draw_shape
        mask = draw(obj.shape, size, cx, cy, r, rot)
        image = mask[..., None] * _fill(obj, size, rng) + (1.0 - mask[..., None]) * image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position(obj: ObjectSpec) -> str:
    horizontal = "left" if obj.x < 0.38 else "right" if obj.x > 0.62 else ""
    vertical = "top" if obj.y < 0.38 else "bottom" if obj.y > 0.62 else ""
    if horizontal and vertical:
        return f"at the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    return f"at the {vertical}" if vertical else "in the middle"


def _words(obj: ObjectSpec, rng: np.random.Generator) -> tuple[str, str]:
    color = RARE_COLOR[obj.color] if rng.random() < RARE_WORD_RATE else obj.color
    shape = RARE_SHAPE[obj.shape] if rng.random() < RARE_WORD_RATE else obj.shape
    return color, shape


def _noun_phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    """"a small striped red circle", with each optional attribute mentioned or not."""
    color, shape = _words(obj, rng)
    words = []
    if rng.random() < 0.4:
        words.append(obj.size)
    if obj.texture != "plain" and rng.random() < 0.6:
        words.append(obj.texture)
    words += [color, shape]
    phrase = " ".join(words)
    return f"{_article(phrase)} {phrase}"


_ONE = (
    "{np}.", "a photo of {np}.", "a picture of {np}.", "an image of {np}.", "there is {np} in the picture.",
    "{np} on a grey background.", "a drawing of {np}.", "a close-up of {np}.", "this shows {np}.",
    "a rendering of {np}.", "a photo of {np} {pos}.", "{np} {pos}.", "a simple picture with {np} in it.",
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption of `scene`, in one of many phrasings."""
    if len(scene) == 1:
        obj = scene[0]
        r = rng.random()
        if r < 0.15:
            color, shape = _words(obj, rng)
            form = rng.integers(3)
            return (f"a {shape} that is {color}." if form == 0 else
                    f"{_article(color)} {color} coloured {shape}." if form == 1 else
                    f"the {shape} in this picture is {color}.")
        template = _ONE[rng.integers(len(_ONE))]
        return template.format(np=_noun_phrase(obj, rng), pos=_position(obj))
    a, b = scene
    if (a.color, a.shape) == (b.color, b.shape):
        color, shape = _words(a, rng)
        texture = f"{a.texture} " if a.texture != "plain" and rng.random() < 0.5 else ""
        plural = PLURALS.get(shape, shape + "s")
        return str(rng.choice([f"two {texture}{color} {plural}.", f"a photo of two {texture}{color} {plural}.",
                           f"a pair of {texture}{color} {plural}."]))
    first, second = _noun_phrase(a, rng), _noun_phrase(b, rng)
    return str(rng.choice([f"{first} and {second}.", f"a photo of {first} next to {second}.",
                       f"{first} {_position(a)} and {second} {_position(b)}.",
                       f"a picture with {first} and {second}."]))


# --------------------------------------------------------------------------- datasets
def zero_shot_set(per_class: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out single-object images of every class in :data:`CLASSES`: (images, labels [N])."""
    images, labels = [], []
    for label, (color, shape) in enumerate(CLASSES):
        for k in range(per_class):
            rng = np.random.default_rng([seed, _STREAMS["heldout"], label, k])
            images.append(render_scene(sample_scene(rng, color, shape, single=True), rng, size))
            labels.append(label)
    return images, np.asarray(labels)


def make_task(name: str, seed: int = 0, size: int = IMAGE_SIZE) -> ImageDataset:
    """A downstream task of :data:`TASKS` (24 classes; 24 train, 8 val, 25 test images per class)."""
    if name not in _TASK_IDS:
        raise ValueError(f"unknown toy-world task {name!r}; choose one of {', '.join(TASKS)}")
    style = "outline" if name == "toy_shift" else "filled"
    splits = {}
    for split, per_class in SPLIT_SIZES.items():
        examples = []
        for label, (color, shape) in enumerate(TASK_CLASSES[name]):
            for k in range(per_class):
                rng = np.random.default_rng([seed, _TASK_IDS[name], _STREAMS[split], label, k])
                image = render_scene(sample_scene(rng, color, shape, single=True), rng, size, style)
                examples.append(Example(image=image, label=label,
                                        key=f"{name}/v{WORLD_VERSION}/seed{seed}/{split}/{label:02d}_{k:03d}"))
        splits[split] = examples
    return ImageDataset(name=name, classnames=class_names(name), **splits)


def task_fingerprint(name: str, seed: int = 0, size: int = IMAGE_SIZE) -> str:
    """What determines a task's images, for feature-store keys."""
    return hashlib.sha256(json.dumps([name, seed, size, WORLD_VERSION, SPLIT_SIZES, class_names(name)]).encode()
                          ).hexdigest()[:16]


_INFORMATIVE = (
    "A {n} is {a} {c} {s}.",
    "A photo of a {n} shows {a} {c} {s}.",
    "The {n} is {c} and shaped like a {s}.",
    "A {n} looks like {a} {c} {s}, large or small.",
    "You can spot a {n}: it is a {s} coloured {c}.",
    "A {n} is a kind of {s} that is always {c}.",
)
_PARTIAL = ("A {n} is {c}.", "A {n} has the shape of a {s}.")
_REDUNDANT = ("A {n} is {a} {c} {s}!", "The {n}: {a} {c} {s}.")
_VAGUE = ("A {n} is a pleasant thing to look at.", "A {n} can be found in many pictures.",
          "Everyone recognises a {n} when they see one.")
_IRRELEVANT = ("The word {n} was first used long ago.", "Many people like to collect a {n}.")
_SHIFT_STYLE = ("A {n} drawn as an outline is a {c} line in the shape of a {s}.",
                "A sketch of a {n} shows only the edge of {a} {c} {s}.")


def task_descriptions(name: str) -> dict[str, list[str]]:
    """CuPL-format descriptions of every class of task `name`: ``{class name: [sentence, ...]}``.

    15 sentences per class (17 for ``toy_shift``), in a fixed per-class shuffled
    order: six informative ones in common words, two partial (colour only,
    shape only), two redundant, three vague, two irrelevant (and, for the
    shift, two about the drawing style).
    """
    if name not in _TASK_IDS:
        raise ValueError(f"unknown toy-world task {name!r}; choose one of {', '.join(TASKS)}")
    templates = _INFORMATIVE + _PARTIAL + _REDUNDANT + _VAGUE + _IRRELEVANT
    if name == "toy_shift":
        templates += _SHIFT_STYLE
    out = {}
    for label, ((color, shape), n) in enumerate(zip(TASK_CLASSES[name], class_names(name))):
        sentences = [t.format(n=n, c=color, s=shape, a=_article(color)) for t in templates]
        order = np.random.default_rng([_TASK_IDS[name], label]).permutation(len(sentences))
        out[n] = [sentences[i] for i in order]
    return out


def write_task_descriptions(path: str | os.PathLike, name: str) -> epath.Path:
    """Writes :func:`task_descriptions` as CuPL JSON to `path`; returns the path."""
    atomic.write_json(path, task_descriptions(name))
    return storage.path(path)


def content_key(scene: Scene) -> tuple:
    """What every caption of a scene agrees on: its objects' colours and shapes (sizes and textures
    are mentioned only sometimes)."""
    return tuple(sorted((o.color, o.shape) for o in scene))


def _pool_part(seed: int, start: int, stop: int, size: int, captions_per_scene: int
               ) -> list[tuple[np.ndarray, list[str], tuple]]:
    """Pretraining scenes start..stop-1, each from its own seed: (image, captions, content key)."""
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, _STREAMS["pretrain"], i])
        scene = sample_scene(rng)
        image = render_scene(scene, rng, size)
        out.append((image, [caption(scene, rng) for _ in range(captions_per_scene)], content_key(scene)))
    return out


def _pool_part_to_stdout(*args: int) -> None:
    """Entry point of a rendering subprocess: `_pool_part(*args)`, pickled to stdout."""
    pickle.dump(_pool_part(*args), sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)


def _env_importing_this_package() -> dict[str, str]:
    """The environment, with this checkout first on PYTHONPATH (it may be imported from a path, not installed)."""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def pretraining_pool(num_scenes: int, seed: int = 0, size: int = IMAGE_SIZE, captions_per_scene: int = 2,
                     workers: int | None = None) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """Scenes for pretraining: images uint8 [N, size, size, 3], each scene's captions, and content
    groups int [N] (scenes with equal :func:`content_key`).

    Rendered by `workers` processes (default: one per available core; at most one
    per 1,000 scenes): this one and `workers - 1` subprocesses. Every scene has its
    own seed, so the pool is the same whatever the number of workers.
    """
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), num_scenes // 1000))
    bounds = np.linspace(0, num_scenes, workers + 1).astype(int)
    # Plain subprocesses rather than multiprocessing: spawn would re-import the caller's main
    # script, and fork would copy JAX's threads (the caller may be mid-training).
    children = [subprocess.Popen(
        [sys.executable, "-c", "import sys; from aape_jax.data.toyworld import _pool_part_to_stdout as f; "
         "f(*map(int, sys.argv[1:]))", *map(str, (seed, lo, hi, size, captions_per_scene))],
        stdout=subprocess.PIPE, env=_env_importing_this_package()) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        parts = [_pool_part(seed, 0, int(bounds[1]), size, captions_per_scene)]
        for child in children:
            out, _ = child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"a pretraining-pool rendering subprocess failed (exit {child.returncode}); "
                                   "its error is printed above")
            parts.append(pickle.loads(out))
    finally:  # on an error or Ctrl-C here, no renderer outlives the call
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    images = np.empty((num_scenes, size, size, 3), np.uint8)
    captions: list[list[str]] = []
    keys: dict[tuple, int] = {}
    groups = np.empty(num_scenes, np.int64)
    for i, (image, scene_captions, key) in enumerate(x for part in parts for x in part):
        images[i] = image
        captions.append(scene_captions)
        groups[i] = keys.setdefault(key, len(keys))
    return images, captions, groups
