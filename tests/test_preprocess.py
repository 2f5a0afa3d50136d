"""Tests for aape_jax.clip.preprocess against transformers' CLIPImageProcessor.

transformers 5 splits the processor into ``CLIPImageProcessor`` (torchvision
backend, unavailable here) and ``CLIPImageProcessorPil`` (PIL/numpy backend,
what ``use_fast=False`` selects); the reference is the latter.
"""

from __future__ import annotations

import json
import re

import numpy as np
import PIL.Image
import pytest

from aape_jax.clip.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    eval_transform,
    load_image,
    normalize,
    random_resized_crop_params,
    train_augment,
)

transformers = pytest.importorskip("transformers")
CLIPImageProcessorPil = transformers.CLIPImageProcessorPil

ATOL = 1e-5
# Sizes chosen to cover: smaller and larger than every target, portrait /
# landscape / square, odd sides, and odd (size - crop) gaps where crop rounding matters.
SHAPES = [(224, 224), (100, 37), (37, 100), (500, 333), (333, 500), (1001, 999), (225, 224), (227, 300), (61, 61), (7, 9)]
TARGETS = [224, 64, 336]


def _hf(size: int) -> CLIPImageProcessorPil:
    """openai/clip-vit-base-patch16's processor settings, at shortest edge / crop ``size``."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def _ref(size: int, images, **kw) -> np.ndarray:
    """Reference output in NHWC."""
    out = _hf(size)(images=images, return_tensors="np", **kw)["pixel_values"]
    return np.asarray(out).transpose(0, 2, 3, 1)


def _rand(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like uint8 image (JPEG of pure noise is a poor stand-in for real data)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), (x + y) / max(h + w - 2, 1)], -1) * 200
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# eval_transform == CLIPImageProcessor
# --------------------------------------------------------------------------- #
def test_backend_is_pil_without_torchvision():
    # Guards the premise of this file: the fast class would need torchvision.
    assert _hf(224).backend == "pil"


@pytest.mark.parametrize("size", TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_matches_hf_rgb(size, shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    img = PIL.Image.fromarray(_rand(rng, shape + (3,)))
    ours = eval_transform(img, ImageTransform.openai(size))
    ref = _ref(size, [img])
    assert ours.shape == ref.shape == (1, size, size, 3)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def _mode_image(mode: str, rng: np.random.Generator, h: int, w: int) -> PIL.Image.Image:
    rgb = PIL.Image.fromarray(_rand(rng, (h, w, 3)))
    if mode == "RGBA_opaque":
        a = np.concatenate([np.asarray(rgb), np.full((h, w, 1), 255, np.uint8)], -1)
        return PIL.Image.fromarray(a)
    if mode == "LA_opaque":
        return rgb.convert("L").convert("LA")
    if mode == "P":
        return rgb.quantize(colors=64)
    if mode == "1":
        return rgb.convert("1")
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA_opaque", "LA_opaque", "1"])
@pytest.mark.parametrize("size", [224, 64])
def test_eval_matches_hf_modes(mode, size):
    rng = np.random.default_rng(1)
    img = _mode_image(mode, rng, 91, 150)
    ours = eval_transform(img, ImageTransform.openai(size))
    np.testing.assert_allclose(ours, _ref(size, [img]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P_transparency"])
def test_alpha_is_dropped_like_clip_reference(mode):
    """Translucent pixels: we follow OpenAI CLIP (convert('RGB') drops alpha).

    transformers 5 composites onto white instead, so the reference here is HF
    applied to img.convert('RGB'); the raw-image HF result must differ, proving
    the test image really exercises transparency.
    """
    rng = np.random.default_rng(2)
    h, w = 80, 120
    rgb = _rand(rng, (h, w, 3))
    alpha = _rand(rng, (h, w, 1))
    if mode == "RGBA":
        img = PIL.Image.fromarray(np.concatenate([rgb, alpha], -1))
    elif mode == "LA":
        img = PIL.Image.merge("LA", [PIL.Image.fromarray(rgb[..., 0]), PIL.Image.fromarray(alpha[..., 0])])
    elif mode == "PA":
        p = PIL.Image.fromarray(rgb).quantize(colors=32)
        img = p.convert("PA")
        img.putalpha(PIL.Image.fromarray(alpha[..., 0]))
    else:
        img = PIL.Image.fromarray(rgb).quantize(colors=32)
        img.info["transparency"] = 0  # palette index 0 is transparent
    assert load_image(img).mode == "RGB"
    t = ImageTransform.openai(64)
    ours = eval_transform(img, t)
    # Via numpy: convert("RGB") keeps a P image's transparency as an RGB colour key
    # in .info, which HF would composite again.
    dropped = PIL.Image.fromarray(np.asarray(img.convert("RGB")))
    np.testing.assert_allclose(ours, _ref(64, [dropped]), atol=ATOL, rtol=0)
    assert "transparency" not in load_image(img).info
    assert np.abs(ours - _ref(64, [img])).max() > 1e-2


def test_mode_conversions_to_rgb():
    rng = np.random.default_rng(3)
    g = _rand(rng, (20, 30))
    for img in [
        PIL.Image.fromarray(g),
        PIL.Image.fromarray(g).convert("1"),
        PIL.Image.fromarray(g.astype(np.float32)),  # mode F
        PIL.Image.fromarray(g.astype(np.int32)),  # mode I
        PIL.Image.fromarray(_rand(rng, (20, 30, 3))).convert("CMYK"),
        PIL.Image.fromarray(_rand(rng, (20, 30, 3))).convert("YCbCr"),
    ]:
        out = load_image(img)
        assert out.mode == "RGB" and out.size == (30, 20), img.mode
    # 8-bit-valued F and I images survive PIL's clip-to-[0, 255] unchanged.
    for arr in (g.astype(np.float32), g.astype(np.int32)):
        np.testing.assert_array_equal(np.asarray(load_image(PIL.Image.fromarray(arr)))[..., 1], g)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    a16 = np.array([[0, 128, 257, 32767, 65535, 1000]], dtype=np.uint16)
    img = PIL.Image.fromarray(a16)
    assert img.mode == "I;16"
    expect = np.array([[0, 0, 1, 127, 255, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(img))[..., 0], expect)
    path = tmp_path / "g16.png"
    img.save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 2], expect)


@pytest.mark.parametrize("shape", [(50, 70), (50, 70, 1), (50, 70, 3), (71, 40, 3)])
def test_eval_matches_hf_numpy(shape):
    rng = np.random.default_rng(4)
    a = _rand(rng, shape)
    ref_in = a[..., None] if a.ndim == 2 else a  # HF cannot take [H, W]
    ours = eval_transform(a, ImageTransform.openai(64))
    ref = _ref(64, [ref_in], input_data_format="channels_last")
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_numpy_rgba_drops_alpha():
    rng = np.random.default_rng(5)
    a = _rand(rng, (40, 60, 4))
    ours = eval_transform(a, ImageTransform.openai(64))
    ref = _ref(64, [np.ascontiguousarray(a[..., :3])], input_data_format="channels_last")
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_eval_matches_hf_files(tmp_path, fmt):
    rng = np.random.default_rng(6)
    paths, shapes = [], [(300, 200), (150, 411), (224, 224)]
    for k, (h, w) in enumerate(shapes):
        p = tmp_path / f"im{k}.{fmt}"
        PIL.Image.fromarray(_smooth(rng, h, w)).save(p)
        paths.append(p)
    p_l = tmp_path / f"gray.{fmt}"
    PIL.Image.fromarray(_smooth(rng, 99, 131)[..., 0]).save(p_l)
    paths.append(str(p_l))  # str and Path both accepted
    ours = eval_transform(paths, ImageTransform.openai(224))
    ref_imgs = []
    for p in paths:
        with PIL.Image.open(p) as im:
            im.load()
            ref_imgs.append(im.copy())
    np.testing.assert_allclose(ours, _ref(224, ref_imgs), atol=ATOL, rtol=0)


def test_mixed_batch_matches_single_calls():
    rng = np.random.default_rng(7)
    batch = [
        _rand(rng, (30, 40, 3)),
        PIL.Image.fromarray(_rand(rng, (300, 120))),
        _mode_image("CMYK", rng, 64, 64),
        _rand(rng, (500, 333)),
    ]
    t = ImageTransform.openai(64)
    out = eval_transform(batch, t)
    assert out.shape == (4, 64, 64, 3) and out.dtype == np.float32
    for k, img in enumerate(batch):
        np.testing.assert_array_equal(out[k], eval_transform(img, t)[0])


def test_resize_smaller_than_crop_pads_like_hf():
    # Not a CLIP setting, but from_preprocessor_config could produce it.
    rng = np.random.default_rng(8)
    img = PIL.Image.fromarray(_rand(rng, (70, 45, 3)))
    t = ImageTransform(resize=50, crop_size=64, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    hf = CLIPImageProcessorPil(size={"shortest_edge": 50}, crop_size={"height": 64, "width": 64})
    ref = hf(images=[img], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(eval_transform(img, t), ref, atol=ATOL, rtol=0)


def test_custom_mean_std():
    rng = np.random.default_rng(9)
    img = PIL.Image.fromarray(_rand(rng, (90, 70, 3)))
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.25, 0.125)
    t = ImageTransform(resize=72, crop_size=64, mean=mean, std=std)
    hf = CLIPImageProcessorPil(
        size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}, image_mean=list(mean), image_std=list(std)
    )
    ref = hf(images=[img], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(eval_transform(img, t), ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- #
# from_preprocessor_config
# --------------------------------------------------------------------------- #
HF_B16_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def _write(tmp_path, cfg, name="preprocessor_config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def test_config_new_format(tmp_path):
    p = _write(tmp_path, HF_B16_CONFIG)
    t = ImageTransform.from_preprocessor_config(p, 224)
    assert t == ImageTransform.openai(224)
    # A checkpoint directory and a parsed dict work too.
    assert ImageTransform.from_preprocessor_config(tmp_path, 224) == t
    assert ImageTransform.from_preprocessor_config(HF_B16_CONFIG, 224) == t
    # Lists are coerced to tuples, so transforms hash (e.g. as jit static args).
    assert hash(t) == hash(ImageTransform(224, 224, list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)))


def test_config_legacy_int_format(tmp_path):
    # Old CLIPFeatureExtractor configs: ints, legacy key names absent.
    cfg = {
        "crop_size": 336,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "resample": 3,
        "size": 350,
    }
    t = ImageTransform.from_preprocessor_config(_write(tmp_path, cfg), 336)
    assert t == ImageTransform(resize=350, crop_size=336, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))


def test_config_missing_file_gives_openai_defaults(tmp_path):
    t = ImageTransform.from_preprocessor_config(tmp_path / "nope.json", 336)
    assert t == ImageTransform(resize=336, crop_size=336, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    assert ImageTransform.from_preprocessor_config(tmp_path, 224) == ImageTransform.openai(224)


@pytest.mark.parametrize(
    "field, value",
    [
        ("resample", 2),
        ("do_resize", False),
        ("do_center_crop", False),
        ("do_normalize", False),
        ("size", {"height": 224, "width": 224}),
        ("crop_size", {"height": 224, "width": 200}),
        ("image_mean", [0.5, 0.5]),
    ],
)
def test_config_bad_field_names_file_and_field(tmp_path, field, value):
    p = _write(tmp_path, {**HF_B16_CONFIG, field: value}, "cfg.json")
    with pytest.raises(ValueError) as e:
        ImageTransform.from_preprocessor_config(p, 224)
    assert str(p) in str(e.value) and field in str(e.value)


def test_config_crop_mismatch_names_file(tmp_path):
    p = _write(tmp_path, HF_B16_CONFIG, "cfg.json")
    with pytest.raises(ValueError, match="crop_size") as e:
        ImageTransform.from_preprocessor_config(p, 336)
    assert str(p) in str(e.value)


def test_config_eval_equals_hf_from_same_config(tmp_path):
    cfg = {**HF_B16_CONFIG, "size": {"shortest_edge": 80}, "crop_size": {"height": 64, "width": 64}}
    t = ImageTransform.from_preprocessor_config(_write(tmp_path, cfg), 64)
    hf = CLIPImageProcessorPil(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
    img = PIL.Image.fromarray(_rand(np.random.default_rng(10), (123, 77, 3)))
    ref = hf(images=[img], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(eval_transform(img, t), ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- #
# train_augment
# --------------------------------------------------------------------------- #
@pytest.fixture
def batch():
    rng = np.random.default_rng(11)
    return [_smooth(rng, 120, 90), PIL.Image.fromarray(_rand(rng, (64, 200))), _rand(rng, (100, 100, 3))]


def test_train_deterministic_and_shape(batch):
    t = ImageTransform.openai(48)
    a = train_augment(batch, t, np.random.default_rng(0))
    b = train_augment(batch, t, np.random.default_rng(0))
    c = train_augment(batch, t, np.random.default_rng(1))
    assert a.shape == (3, 48, 48, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Values are normalised pixels: bounded by (0 - mean) / std and (1 - mean) / std.
    lo = (0 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    hi = (1 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    assert np.all(a >= lo - 1e-5) and np.all(a <= hi + 1e-5)


def test_train_full_crop_equals_eval_or_its_mirror():
    """scale=ratio=(1, 1) on a square image forces the whole-image crop.

    With resize == crop_size, eval resizes the same square to the same size and
    its centre crop is a no-op, so every train output must be exactly the eval
    output or its horizontal mirror (the image is asymmetric, so the two differ).
    """
    img = _smooth(np.random.default_rng(12), 97, 97)
    t = ImageTransform.openai(64)
    ev = eval_transform(img, t)[0]
    mirror = ev[:, ::-1]
    assert not np.array_equal(ev, mirror)
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(40):
        out = train_augment(img, t, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))[0]
        if np.array_equal(out, ev):
            kinds.append("plain")
        else:
            np.testing.assert_array_equal(out, mirror)
            kinds.append("flip")
    assert set(kinds) == {"plain", "flip"}


def test_train_flip_rate_about_half():
    img = _smooth(np.random.default_rng(13), 32, 32)
    t = ImageTransform.openai(16)
    ev = eval_transform(img, t)[0]
    rng = np.random.default_rng(123)
    out = train_augment([img] * 2000, t, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = np.all(out == ev, axis=(1, 2, 3))
    # Binomial(2000, 0.5): sd ~ 22, so +-100 is > 4 sd.
    assert 900 < plain.sum() < 1100


def test_crop_params_area_and_ratio_in_range():
    rng = np.random.default_rng(14)
    for (H, W), scale in [((200, 200), (0.08, 1.0)), ((200, 300), (0.2, 0.5)), ((480, 640), (0.08, 1.0))]:
        areas, ratios = [], []
        for _ in range(2000):
            i, j, h, w = random_resized_crop_params(H, W, rng, scale)
            assert 0 <= i and i + h <= H and 0 <= j and j + w <= W and h > 0 and w > 0
            areas.append(h * w / (H * W))
            ratios.append(w / h)
        areas, ratios = np.array(areas), np.array(ratios)
        # Integer rounding of w and h moves the area by at most ~(w + h + 1) / 2 pixels.
        tol = (H + W) / (H * W)
        assert areas.min() >= scale[0] - tol and areas.max() <= scale[1] + tol
        # Whole-image fallbacks (4:3 / 3:4 / square inputs) keep ratios within range.
        assert ratios.min() >= 3 / 4 - 0.02 and ratios.max() <= 4 / 3 + 0.02
        # Areas roughly uniform over scale: the mean is near the midpoint.
        # (Large-area draws get rejected more for non-square images, pulling the mean down.)
        assert abs(areas.mean() - sum(scale) / 2) < 0.1 * (scale[1] - scale[0]) + 0.05


@pytest.mark.parametrize(
    "H, W, expect",
    [
        # torchvision's central fallback: clamp the aspect ratio into `ratio`.
        (100, 300, (0, 83, 100, 133)),  # in_ratio 3 > 4/3: h = H, w = round(H * 4/3)
        (300, 100, (83, 0, 133, 100)),  # in_ratio 1/3 < 3/4: w = W, h = round(W / (3/4))
        (100, 110, (0, 0, 100, 110)),  # in range: whole image
    ],
)
def test_crop_params_fallback_after_ten_misses(H, W, expect):
    # An unreachable scale makes every try fail, forcing the fallback.
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(H, W, rng, scale=(5.0, 6.0)) == expect


def test_crop_params_draw_count_is_torchvision_like():
    # Fallback path consumes exactly 10 x (area, ratio) draws and no position draws.
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    random_resized_crop_params(100, 300, rng, scale=(5.0, 6.0))
    ref.uniform(size=20)
    assert rng.random() == ref.random()


def test_train_crop_matches_manual_pipeline():
    """train_augment == crop(params) -> bicubic resize -> optional flip -> normalise."""
    img = _smooth(np.random.default_rng(15), 150, 110)
    t = ImageTransform.openai(40)
    out = train_augment(img, t, np.random.default_rng(7))[0]
    rng = np.random.default_rng(7)
    i, j, h, w = random_resized_crop_params(150, 110, rng)
    flip = rng.random() < 0.5
    crop = PIL.Image.fromarray(img).crop((j, i, j + w, i + h)).resize((40, 40), PIL.Image.Resampling.BICUBIC)
    a = np.asarray(crop).astype(np.float32) / 255
    a = a[:, ::-1] if flip else a
    expect = (a - np.array(OPENAI_CLIP_MEAN, np.float32)) / np.array(OPENAI_CLIP_STD, np.float32)
    np.testing.assert_allclose(out, expect, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
def test_missing_path_named(tmp_path):
    p = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(p)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        eval_transform([str(p)], ImageTransform.openai(32))


def test_corrupt_file_named(tmp_path):
    p = tmp_path / "corrupt.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="corrupt.jpg"):
        load_image(p)


def test_truncated_file_named(tmp_path):
    good = tmp_path / "good.png"
    PIL.Image.fromarray(_smooth(np.random.default_rng(1), 64, 64)).save(good)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(bad)


def test_bad_dtype_named():
    with pytest.raises(ValueError, match="float64"):
        load_image(np.zeros((8, 8, 3), dtype=np.float64))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (8, 8, 2), (8,)])
def test_bad_shape_named(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        eval_transform(np.zeros(shape, dtype=np.uint8), ImageTransform.openai(32))


def test_bad_type():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]



def test_normalize_into_a_batch_row_equals_the_whole_batch():
    t = ImageTransform.openai(16)
    crops = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    rows = np.full((3, 16, 16, 3), np.nan, np.float32)
    for i in (2, 0, 1):
        row = rows[i]
        assert normalize(crops[i], t, out=row) is row
    np.testing.assert_array_equal(rows, normalize(crops, t))
    np.testing.assert_allclose(rows[1, 4, 5], (crops[1, 4, 5] / 255 - np.asarray(OPENAI_CLIP_MEAN)) / OPENAI_CLIP_STD,
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"float64 \(16, 16, 3\)"):
        normalize(crops[0], t, out=np.empty((16, 16, 3), np.float64))
