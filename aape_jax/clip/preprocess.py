"""CLIP image preprocessing in numpy + PIL (no torch / torchvision at run time).

Two pipelines, both returning channels-last (NHWC) float32 batches ready for a
JAX CLIP vision tower:

* :func:`eval_transform` -- CLIP's test-time transform (``Resize(shortest side,
  BICUBIC)`` -> ``CenterCrop`` -> ``/255`` -> ``Normalize``).  It is written to be
  numerically identical to transformers' ``CLIPImageProcessor`` PIL backend
  (``CLIPImageProcessorPil`` in transformers 5), which the tests check. SigLIP's
  (``squash``) resizes straight to the square input instead, as
  ``SiglipImageProcessor`` does.
* :func:`train_augment` -- CoOp's (Dassl's) training transform
  (``RandomResizedCrop(BICUBIC)`` -> ``RandomHorizontalFlip`` -> ``Normalize``),
  re-implementing torchvision's sampling algorithm on an explicit
  ``np.random.Generator`` so runs are reproducible without torch's global RNG.

Images are decoded and resampled with PIL (its resize runs in C and releases the
GIL); the final ``/255`` + normalisation is a per-channel 256-entry lookup table,
so no per-pixel Python work happens anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

from aape_jax import storage

__all__ = [
    "ImageLike",
    "ImageTransform",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PREPROCESSOR_CONFIG_NAME",
    "RecordImage",
    "load_image",
    "eval_crop",
    "augment_crop",
    "normalize",
    "eval_transform",
    "train_augment",
    "random_resized_crop_params",
]


@dataclasses.dataclass(frozen=True)
class RecordImage:
    """An image read only when it is decoded: a record of a source too large to hold in memory.

    Attributes:
      read: () -> the encoded bytes, a uint8 array or a PIL image.
      name: what errors call it (e.g. "tfds dtd/test[12]").
    """

    read: Callable[[], Any]
    name: str


ImageLike = str | os.PathLike | PIL.Image.Image | np.ndarray | RecordImage

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

# PIL's enum value for bicubic; HF configs store the raw int (``"resample": 3``).
_BICUBIC = int(PIL.Image.Resampling.BICUBIC)
_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Static parameters of CLIP's image preprocessing.

    Attributes:
      resize: target length of the image's *shorter* side before cropping
        (eval only; the training crop is resized straight to ``crop_size``).
      crop_size: side of the square output, i.e. the vision tower's image size.
      mean: per-channel RGB mean, in [0, 1] units, shape (3,).
      std: per-channel RGB std, in [0, 1] units, shape (3,).
      squash: eval resizes the whole image straight to ``crop_size`` x
        ``crop_size`` (aspect ratio not kept) with no crop, as
        ``SiglipImageProcessor`` does (``size`` {"height", "width"}); ``resize``
        is then ``crop_size``.
    """

    resize: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    squash: bool = False

    def __post_init__(self) -> None:
        # Coerce lists / numpy scalars to plain float tuples so instances stay
        # hashable (usable as static arguments) and compare equal by value.
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if int(self.resize) <= 0 or int(self.crop_size) <= 0:
            raise ValueError(
                f"resize and crop_size must be positive, got resize={self.resize}, "
                f"crop_size={self.crop_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 entries (RGB), got {self.mean}, {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std entries must be positive, got {self.std}")

    def key(self) -> dict[str, Any]:
        """The fields as a dict for cache keys; `squash` only when set, so the keys of CLIP
        transforms written before it existed stay the same."""
        fields = dataclasses.asdict(self)
        if not self.squash:
            del fields["squash"]
        return fields

    @classmethod
    def openai(cls, image_size: int) -> ImageTransform:
        """OpenAI CLIP's transform: resize shorter side to ``image_size``, crop it square."""
        return cls(resize=int(image_size), crop_size=int(image_size), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)

    @classmethod
    def siglip(cls, image_size: int) -> ImageTransform:
        """SigLIP's transform (``SiglipImageProcessor``'s defaults): resize straight to the square
        input, normalise with mean = std = 0.5."""
        return cls(resize=int(image_size), crop_size=int(image_size), mean=(0.5,) * 3, std=(0.5,) * 3, squash=True)

    @classmethod
    def from_preprocessor_config(
        cls, path_or_dict: str | os.PathLike | Mapping[str, Any], image_size: int
    ) -> ImageTransform:
        """Builds the transform from a Hugging Face ``preprocessor_config.json``.

        Args:
          path_or_dict: the JSON file, a checkpoint directory holding
            ``preprocessor_config.json``, or the already-parsed dict.
          image_size: the vision tower's input size; the config's crop must match.

        A missing file falls back to :meth:`openai` because several converted CLIP
        checkpoints ship without one and OpenAI's constants are what they were
        trained with.  Anything the numpy pipeline cannot reproduce exactly
        (non-bicubic resampling, disabled resize/crop/normalise, non-square
        resize or crop) raises ``ValueError`` naming the file and field rather
        than silently preprocessing differently from the reference.
        """
        if isinstance(path_or_dict, Mapping):
            cfg: Mapping[str, Any] = path_or_dict
            where = "<preprocessor config dict>"
        else:
            path = os.fspath(path_or_dict)
            if storage.path(path).is_dir():
                path = os.path.join(path, PREPROCESSOR_CONFIG_NAME)
            if not storage.path(path).exists():
                return cls.openai(image_size)
            where = path
            try:
                cfg = json.loads(storage.read_text(path))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{where}: cannot read preprocessor config: {e}") from e
            if not isinstance(cfg, Mapping):
                raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")

        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"{where}: field {field!r} {why} (got {cfg.get(field)!r})")

        # Flags whose "off" setting would change the pipeline; absent means on,
        # as in CLIPImageProcessor's class defaults.
        squash = isinstance(cfg.get("size"), Mapping) and set(cfg["size"]) == {"height", "width"}
        for flag in ("do_resize", "do_rescale", "do_normalize") + (() if squash else ("do_center_crop",)):
            if not cfg.get(flag, True):
                raise bad(flag, "must be true: the numpy CLIP transform always applies it")
        resample = cfg.get("resample", _BICUBIC)
        if isinstance(resample, bool) or resample != _BICUBIC:
            raise bad("resample", f"must be {_BICUBIC} (PIL BICUBIC), the only mode supported")
        rescale = cfg.get("rescale_factor", 1 / 255)
        if not isinstance(rescale, (int, float)) or not math.isclose(rescale, 1 / 255, rel_tol=1e-6):
            raise bad("rescale_factor", "must be 1/255")

        if squash:
            # SiglipImageProcessor: one resize to the model's input, no crop.
            if cfg.get("do_center_crop") or "crop_size" in cfg:
                raise bad("size", "is {height, width} (a resize without crop) but the config also asks for a crop")
            resize = crop = _square_size(cfg, "size", image_size, bad)
        else:
            resize = _shortest_edge(cfg, "size", image_size, bad)
            crop = _square_size(cfg, "crop_size", image_size, bad)
        if crop != int(image_size):
            raise ValueError(
                f"{where}: field {'size' if squash else 'crop_size'!r} is {crop} but the model's image_size is "
                f"{image_size}; the vision tower's position embeddings fix the input size"
            )
        mean = _triple(cfg, "image_mean", OPENAI_CLIP_MEAN, bad)
        std = _triple(cfg, "image_std", OPENAI_CLIP_STD, bad)
        try:
            return cls(resize=resize, crop_size=crop, mean=mean, std=std, squash=squash)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e


def _shortest_edge(cfg: Mapping[str, Any], field: str, default: int, bad) -> int:
    """HF's ``size``: an int (legacy, meaning shortest edge) or {"shortest_edge": R}."""
    v = cfg.get(field, default)
    if isinstance(v, Mapping):
        if set(v) != {"shortest_edge"}:
            # {"height", "width"} would be an aspect-distorting resize, which CLIP never uses.
            raise bad(field, 'must be an int or {"shortest_edge": int}')
        v = v["shortest_edge"]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise bad(field, "must be a positive int shortest edge")
    return v


def _square_size(cfg: Mapping[str, Any], field: str, default: int, bad) -> int:
    """HF's ``crop_size``: an int or {"height": h, "width": w} with h == w."""
    v = cfg.get(field, default)
    if isinstance(v, Mapping):
        if set(v) != {"height", "width"} or v["height"] != v["width"]:
            raise bad(field, 'must be an int or a square {"height": s, "width": s}')
        v = v["height"]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise bad(field, "must be a positive int")
    return v


def _triple(cfg: Mapping[str, Any], field: str, default, bad) -> tuple[float, float, float]:
    v = cfg.get(field, default)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (v, v, v)  # HF allows a scalar applied to every channel
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise bad(field, "must be 3 numbers") from None
    if len(t) != 3:
        raise bad(field, "must be 3 numbers")
    return t  # type: ignore[return-value]


# --------------------------------------------------------------------------- #
# Decoding
# --------------------------------------------------------------------------- #
def load_image(image: ImageLike) -> PIL.Image.Image:
    """Returns ``image`` as an RGB PIL image.

    Accepts a path, a PIL image of any common mode, or a uint8 numpy array of
    shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].

    Alpha is *dropped* (PIL ``convert("RGB")``), not composited, because that is
    what OpenAI CLIP's and CoOp's ``_convert_image_to_rgb`` do.  (transformers 5's
    ``CLIPImageProcessor`` instead composites onto white, so the two differ on
    translucent pixels only.)  16-bit grayscale is scaled to 8 bits because PIL's
    own conversion clips at 255, which whitens almost every real 16-bit image;
    32-bit ``I`` and float ``F`` images go through PIL's clip-to-[0, 255].
    """
    if isinstance(image, PIL.Image.Image):
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        return _open_rgb(image)
    if isinstance(image, RecordImage):
        return _read_record(image)
    raise TypeError(f"expected a path, PIL.Image.Image, np.ndarray or RecordImage image, got {type(image).__name__}")


def _read_record(record: RecordImage) -> PIL.Image.Image:
    data = record.read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return load_image(data)
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            rgb = _to_rgb(im)
            return rgb.copy() if rgb is im else rgb
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {record.name}: {e}") from e


def _open_rgb(path: str | os.PathLike) -> PIL.Image.Image:
    p = os.fspath(path)
    try:
        # The context managers close the file (local or a bucket's, aape_jax.storage);
        # convert() forces the full decode, so truncated files fail here, with the path, not later.
        with storage.path(p).open("rb") as f, PIL.Image.open(f) as im:
            rgb = _to_rgb(im)
            # close() invalidates the image itself, so an already-RGB file needs a copy.
            return rgb.copy() if rgb is im else rgb
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {p}") from None
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image file {p}: {e}") from e


def _to_rgb(im: PIL.Image.Image) -> PIL.Image.Image:
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode in _16BIT_MODES:
        a = np.asarray(im, dtype=np.uint32)
        # Round-to-nearest map of [0, 65535] onto [0, 255] (65535 / 257 == 255).
        a8 = ((a + 128) // 257).astype(np.uint8)
        return PIL.Image.fromarray(a8).convert("RGB")
    with warnings.catch_warnings():
        # PIL warns that palette images with byte transparency "should be converted
        # to RGBA"; dropping the transparency is exactly the intended behaviour.
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        rgb = im.convert("RGB")
    # P -> RGB keeps the transparent palette entry as an RGB colour key; drop it so
    # no downstream consumer re-applies the transparency we deliberately discard.
    rgb.info.pop("transparency", None)
    return rgb


def _array_to_rgb(a: np.ndarray) -> PIL.Image.Image:
    if a.dtype != np.uint8:
        raise ValueError(
            f"numpy images must be uint8 with values 0..255, got dtype {a.dtype} "
            f"(shape {a.shape}); convert e.g. with (x * 255).round().astype(np.uint8)"
        )
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        rgb = np.repeat(a[..., None], 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3]  # drop alpha, consistent with convert("RGB") above
    else:
        raise ValueError(
            f"numpy images must have shape [H, W] or [H, W, C] with C in (1, 3, 4), "
            f"got shape {a.shape}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image, shape {a.shape}")
    return PIL.Image.fromarray(np.ascontiguousarray(rgb))


def _as_list(images: Sequence[ImageLike] | ImageLike) -> list[ImageLike]:
    # An ndarray is always ONE image: a 4-D array is rejected by load_image rather
    # than silently treated as a batch with unknown layout.
    if isinstance(images, (str, os.PathLike, PIL.Image.Image, np.ndarray)):
        return [images]
    return list(images)


# --------------------------------------------------------------------------- #
# Pixel ops
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=16)
def _normalize_lut(transform: ImageTransform) -> np.ndarray:
    """[3, 256] float32 table: lut[c, v] = (v/255 - mean[c]) / std[c] (cached: a pipeline's workers ask for
    it once per image).

    Same float ops/dtypes as transformers' rescale (float64 multiply, cast to
    float32) followed by its float32 normalise, so results match bit for bit.
    """
    v = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(transform.mean, dtype=np.float32)[:, None]
    std = np.asarray(transform.std, dtype=np.float32)[:, None]
    lut = (v[None, :] - mean) / std
    lut.flags.writeable = False  # shared by every caller through the cache
    return lut


def normalize(pixels: np.ndarray, transform: ImageTransform, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 crops [..., crop_size, crop_size, 3] -> float32 normalised through the lut [3, 256].

    One 1-D lookup per channel: ~2x faster than float64 rescale arithmetic and
    ~3x faster than a single 2-D fancy index, while staying bit-identical to HF.
    `out` (float32, the shape of `pixels`) receives the result, e.g. one row of a
    batch being filled by several threads; it is returned.
    """
    lut = _normalize_lut(transform)
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    elif out.shape != pixels.shape or out.dtype != np.float32:
        raise ValueError(f"out is {out.dtype} {out.shape}; expected float32 {pixels.shape}")
    for ch in range(3):
        out[..., ch] = lut[ch][pixels[..., ch]]
    return out


def _shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) with the shorter side == size; the longer is truncated.

    Same expression as torchvision's Resize(int) and transformers'
    get_resize_output_image_size, so float rounding of ``size * long / short``
    agrees too.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3], zero-padding images smaller than size.

    Offsets use floor((H - size) / 2) like transformers' center_crop.  (torchvision's
    CenterCrop uses round(), which differs by one pixel when H - size is odd and
    round() goes up, e.g. H - size = 3.)
    """
    h, w = a.shape[:2]
    if h < size or w < size:
        # transformers pads with zeros (pre-normalisation black) centred with ceil.
        nh, nw = max(h, size), max(w, size)
        padded = np.zeros((nh, nw, a.shape[2]), dtype=a.dtype)
        top_pad, left_pad = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        padded[top_pad : top_pad + h, left_pad : left_pad + w] = a
        a, h, w = padded, nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


# --------------------------------------------------------------------------- #
# Public transforms
# --------------------------------------------------------------------------- #
def eval_crop(image: ImageLike, transform: ImageTransform) -> np.ndarray:
    """One image -> uint8 [crop_size, crop_size, 3] before normalisation: CLIP's resize of the
    shorter side and centre crop, or with `transform.squash` SigLIP's resize to the square."""
    im = load_image(image)
    c = transform.crop_size
    if transform.squash:
        return np.asarray(im.resize((c, c), resample=PIL.Image.Resampling.BICUBIC))
    new_size = _shortest_side_size(im.width, im.height, transform.resize)
    im = im.resize(new_size, resample=PIL.Image.Resampling.BICUBIC)
    return _center_crop(np.asarray(im), c)


def eval_transform(images: Sequence[ImageLike] | ImageLike, transform: ImageTransform) -> np.ndarray:
    """CLIP's deterministic test-time preprocessing (`eval_crop`, then `normalize`).

    Args:
      images: one image or a sequence of images of any sizes / modes / kinds.
      transform: sizes and normalisation constants.

    Returns:
      float32 [N, crop_size, crop_size, 3] (N = 1 for a single image).
    """
    return _normalized_batch([eval_crop(item, transform) for item in _as_list(images)], transform)


def _normalized_batch(crops: list[np.ndarray], transform: ImageTransform) -> np.ndarray:
    c = transform.crop_size
    return normalize(np.stack(crops) if crops else np.empty((0, c, c, 3), np.uint8), transform)


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params`` on a numpy Generator.

    Returns:
      (top, left, crop_height, crop_width) in pixels of the source image.

    Draw order per attempt (area, log-ratio, then top, left) mirrors torchvision,
    so the distribution is identical even though the random streams are not.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback after 10 misses: the largest central crop whose aspect ratio is
    # clamped into `ratio`, exactly as torchvision does.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_augment(
    images: Sequence[ImageLike] | ImageLike,
    transform: ImageTransform,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """CoOp's training augmentation.

    ``RandomResizedCrop(crop_size, scale, ratio, BICUBIC)`` -> ``RandomHorizontalFlip(0.5)``
    -> ``/255`` -> normalise.  ``transform.resize`` is unused: Dassl skips the
    Resize step whenever random_resized_crop is in the transform list.

    Args:
      images: one image or a sequence of images of any sizes / modes / kinds.
      transform: output size (``crop_size``) and normalisation constants.
      rng: source of all randomness; the same Generator state gives the same batch.
      scale: range of the crop's area as a fraction of the source image's.
      ratio: range of the crop's width / height (sampled log-uniformly).

    Returns:
      float32 [N, crop_size, crop_size, 3].
    """
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")
    if not (0 <= scale[0] <= scale[1]):
        raise ValueError(f"scale must be (lo, hi) with 0 <= lo <= hi, got {scale}")

    return _normalized_batch([augment_crop(item, transform, rng, scale, ratio) for item in _as_list(images)],
                             transform)


def augment_crop(
    image: ImageLike,
    transform: ImageTransform,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """One image -> uint8 [crop_size, crop_size, 3] of `train_augment` before normalisation
    (arguments as there; the crop and the flip draw from `rng`, in that order)."""
    im = load_image(image)
    top, left, h, w = random_resized_crop_params(im.height, im.width, rng, scale, ratio)
    c = transform.crop_size
    # Crop first, then resize (not resize(box=...)): that is what torchvision's
    # resized_crop does, and PIL's box resize would pull filter support from
    # outside the crop at its borders.
    im = im.crop((left, top, left + w, top + h)).resize((c, c), resample=PIL.Image.Resampling.BICUBIC)
    pixels = np.asarray(im)
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels
