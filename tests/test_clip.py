"""Flax CLIP == transformers' PyTorch CLIPModel on the same checkpoint; strict loading errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from aape_jax import clip, hf_weights
from aape_jax.clip import tiny
from aape_jax.clip.tokenizer import write_byte_level_vocab

TEXTS = [
    "a photo of a cat.",
    "",
    "a photo of a dog, a type of pet with floppy ears and a wagging tail",
    "itap of a large red double-decker bus on a rainy street " * 6,  # longer than the context
]


def _hf_checkpoint(directory, text_overrides=None, vision_overrides=None, projection_dim=24,
                   tokenizer_dir=None, seed=0):
    """save_pretrained of a randomly initialised transformers CLIPModel, plus tokenizer/preprocessor files."""
    text = dict(vocab_size=700, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=20, eos_token_id=699, bos_token_id=698)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  image_size=40, patch_size=8)
    text.update(text_overrides or {})
    vision.update(vision_overrides or {})
    torch.manual_seed(seed)
    model = CLIPModel(HFCLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    # Non-trivial LayerNorm/bias values, so a wrong mapping cannot hide behind zeros and ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(np.log(50.0))
    model.save_pretrained(directory)
    if tokenizer_dir is None:
        write_byte_level_vocab(directory, [" ".join(TEXTS)] * 4 + ["abcdefghij klmnopqrstuvwxyz " * 20
                               + " ".join(a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "aeiou")],
                               text["vocab_size"])
    else:
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump({"size": {"shortest_edge": vision["image_size"]},
                   "crop_size": {"height": vision["image_size"], "width": vision["image_size"]},
                   "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711]}, f)
    return model.eval()


def _images(seed=0):
    rng = np.random.default_rng(seed)
    rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [
        Image.fromarray(rgb(40, 40)),
        Image.fromarray(rgb(97, 61)),  # portrait, odd sizes
        Image.fromarray(rgb(30, 300)).convert("L"),  # smaller than the model, grayscale
        Image.fromarray(np.dstack([rgb(64, 80), rng.integers(0, 256, (64, 80, 1), dtype=np.uint8)]), "RGBA"),
        Image.fromarray(rgb(50, 50)).convert("P"),
        rgb(123, 77),
    ]


def _torch_features(model, pixels, ids):
    with torch.no_grad():
        px = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # NHWC -> NCHW
        ti = torch.from_numpy(ids.astype(np.int64))
        zi = model.visual_projection(model.vision_model(pixel_values=px).pooler_output).numpy()
        zt = model.text_projection(model.text_model(input_ids=ti).pooler_output).numpy()
        logits = model(input_ids=ti, pixel_values=px).logits_per_image.numpy()
    return zi, zt, logits


def _assert_parity(model_dir, hf_model, atol=1e-4):
    ours = clip.load(model_dir)
    pixels = ours.preprocess(_images())
    ids = ours.tokenize(TEXTS)
    assert ids[-1, -1] == ours.tokenizer.eot_id  # the long text was truncated, EOT kept last
    zi, zt = ours.encode_image(pixels), ours.encode_text(ids)
    ref_zi, ref_zt, ref_logits = _torch_features(hf_model, pixels, ids)
    np.testing.assert_allclose(zi, ref_zi, atol=atol, rtol=0)
    np.testing.assert_allclose(zt, ref_zt, atol=atol, rtol=0)
    n = lambda z: z / np.linalg.norm(z, axis=-1, keepdims=True)
    logits = ours.logit_scale * n(zi) @ n(zt).T
    np.testing.assert_allclose(logits, ref_logits, atol=atol * 100, rtol=1e-5)
    assert ours.logit_scale == pytest.approx(float(hf_model.logit_scale.detach().exp()), rel=1e-6)


def test_tiny_parity_with_transformers(tmp_path):
    hf = _hf_checkpoint(tmp_path)
    _assert_parity(tmp_path, hf)


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_parity_other_activations_and_eps(tmp_path, act):
    hf = _hf_checkpoint(tmp_path, {"hidden_act": act, "layer_norm_eps": 1e-6},
                        {"hidden_act": act, "layer_norm_eps": 1e-6, "patch_size": 10}, seed=3)
    _assert_parity(tmp_path, hf)


def test_legacy_eos_id_pools_at_endoftext(tmp_path):
    # Configs from before transformers' fix say eos_token_id=2; pooling is then at argmax(ids).
    hf = _hf_checkpoint(tmp_path, {"eos_token_id": 2, "bos_token_id": 1}, seed=1)
    assert clip.load(tmp_path).config.text.eot_token_id == 699
    _assert_parity(tmp_path, hf)


def test_real_vit_b16_geometry_parity(tmp_path, shared_data):
    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16)
    hf = _hf_checkpoint(tmp_path, text, vision, projection_dim=512,
                        tokenizer_dir=shared_data / "clip_tokenizer")
    _assert_parity(tmp_path, hf)


# OpenCLIP/LAION checkpoints in transformers' format (laion/CLIP-ViT-H-14-laion2B-s32B-b79K,
# laion/CLIP-ViT-bigG-14-laion2B-39B-b160k): gelu, other widths and head counts, wider joint
# spaces. Their real widths and heads; two layers per tower keep the test within memory.
OPENCLIP_GEOMETRIES = {
    "vit-h-14": (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16),
                 dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16), 1024),
    "vit-bigg-14": (dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20),
                    dict(hidden_size=1664, intermediate_size=8192, num_attention_heads=16), 1280),
}


@pytest.mark.parametrize("geometry", sorted(OPENCLIP_GEOMETRIES))
def test_openclip_laion_geometry_parity(tmp_path, shared_data, geometry):
    text, vision, projection_dim = OPENCLIP_GEOMETRIES[geometry]
    text = dict(text, vocab_size=49408, num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu",
                eos_token_id=49407, bos_token_id=49406)
    vision = dict(vision, num_hidden_layers=2, image_size=224, patch_size=14, hidden_act="gelu")
    hf = _hf_checkpoint(tmp_path, text, vision, projection_dim=projection_dim,
                        tokenizer_dir=shared_data / "clip_tokenizer")
    ours = clip.load(tmp_path)
    assert (ours.config.projection_dim, ours.config.vision.num_patches) == (projection_dim, 256)
    assert ours.config.text.hidden_act == ours.config.vision.hidden_act == "gelu"
    _assert_parity(tmp_path, hf)


def test_our_tiny_checkpoint_loads_strictly_in_transformers(tmp_path):
    directory = tiny.write_checkpoint(tmp_path / "tiny", seed=1)
    hf, info = CLIPModel.from_pretrained(directory, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    _assert_parity(directory, hf.eval())


def test_seam_equals_plain_text_path(tmp_path):
    import jax.numpy as jnp

    from aape_jax.clip.model import CLIP, first_eot

    model = clip.load(tiny.write_checkpoint(tmp_path / "tiny"))
    ids = model.tokenize(TEXTS)
    module = model.module
    x = module.apply({"params": model.params}, ids, method=CLIP.embed_tokens)
    assert x.shape == (*ids.shape, model.config.text.hidden_size)
    via_seam = module.apply({"params": model.params}, x, first_eot(ids, model.config.text.eot_token_id),
                            method=CLIP.encode_text_embeddings)
    np.testing.assert_allclose(np.asarray(via_seam), model.encode_text(ids), atol=1e-5)
    # Trimming the text to the longest prompt changes nothing (causal attention).
    np.testing.assert_allclose(
        np.asarray(module.apply({"params": model.params}, jnp.asarray(ids), method=CLIP.encode_text)),
        model.encode_text(ids), atol=1e-5)


def test_bucketing_keeps_results_and_limits_compiles(tmp_path):
    from aape_jax.clip import frozen

    model = clip.load(tiny.write_checkpoint(tmp_path / "tiny"), max_batch=16)
    ids = model.tokenize([f"a photo of number {i}" for i in range(37)])
    full = model.encode_text(ids)
    for n in (1, 3, 9, 37):
        np.testing.assert_allclose(model.encode_text(ids[:n]), full[:n], atol=1e-5)
    before = frozen._encode_text._cache_size()
    for n in (2, 5, 6, 7, 11, 13):
        model.encode_text(ids[:n])
    assert frozen._encode_text._cache_size() == before  # buckets 8 and 16 are already compiled


def test_bf16_compute_is_close(tmp_path):
    import jax.numpy as jnp

    directory = tiny.write_checkpoint(tmp_path / "tiny")
    f32, bf16 = clip.load(directory), clip.load(directory, dtype=jnp.bfloat16)
    pixels, ids = f32.preprocess(_images()), f32.tokenize(TEXTS)
    cos = lambda a, b: np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert np.all(cos(f32.encode_image(pixels), bf16.encode_image(pixels)) > 0.99)
    assert np.all(cos(f32.encode_text(ids), bf16.encode_text(ids)) > 0.99)
    assert jnp.asarray(bf16.params["text_projection"]["kernel"]).dtype == jnp.float32


# ---------------------------------------------------------------- bad input


@pytest.fixture
def tiny_dir(tmp_path):
    return tiny.write_checkpoint(tmp_path / "ckpt")


def test_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope/ckpt"):
        clip.load(tmp_path / "nope" / "ckpt")


def test_offline_hub_id_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="pass the path of a local Hugging Face format CLIP checkpoint directory"):
        clip.load("someone/not-a-real-clip-xyz")


def test_missing_weights_file(tiny_dir):
    os.remove(os.path.join(tiny_dir, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        clip.load(tiny_dir)


def test_truncated_weights_file(tiny_dir):
    path = os.path.join(tiny_dir, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="model.safetensors"):
        clip.load(tiny_dir)


def _rewrite(tiny_dir, edit):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(tiny_dir, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_unexpected_and_missing_keys_are_named(tiny_dir):
    def edit(state):
        state["text_model.extra_head.weight"] = np.zeros((2, 2), np.float32)
        del state["vision_model.encoder.layers.1.mlp.fc2.bias"]

    _rewrite(tiny_dir, edit)
    with pytest.raises(ValueError) as err:
        clip.load(tiny_dir)
    assert "text_model.extra_head.weight" in str(err.value)
    assert "vision_model.encoder.layers.1.mlp.fc2.bias" in str(err.value)


def test_wrong_shape_is_named(tiny_dir):
    def edit(state):
        state["visual_projection.weight"] = np.zeros((5, 64), np.float32)

    _rewrite(tiny_dir, edit)
    with pytest.raises(ValueError, match=r"visual_projection.weight: checkpoint \(5, 64\), model expects \(32, 64\)"):
        clip.load(tiny_dir)


def test_config_geometry_errors_name_the_file(tiny_dir):
    path = os.path.join(tiny_dir, "config.json")
    cfg = json.load(open(path))
    cfg["text_config"]["hidden_act"] = "swish"
    json.dump(cfg, open(path, "w"))
    with pytest.raises(ValueError, match="config.json.*hidden_act"):
        clip.load(tiny_dir)
    open(path, "w").write("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        clip.load(tiny_dir)


def test_position_ids_buffers_are_accepted(tiny_dir):
    def edit(state):
        state["text_model.embeddings.position_ids"] = np.arange(32)[None]

    _rewrite(tiny_dir, edit)
    clip.load(tiny_dir)


def test_torch_bin_checkpoint(tiny_dir):
    from safetensors.numpy import load_file

    path = os.path.join(tiny_dir, "model.safetensors")
    state = {k: torch.from_numpy(v) for k, v in load_file(path).items()}
    reference = clip.load(tiny_dir)
    os.remove(path)
    torch.save(state, os.path.join(tiny_dir, hf_weights.TORCH_BIN))
    model = clip.load(tiny_dir)
    ids = model.tokenize(TEXTS)
    np.testing.assert_array_equal(model.encode_text(ids), reference.encode_text(ids))


def test_encode_shape_errors(tiny_dir):
    model = clip.load(tiny_dir)
    with pytest.raises(ValueError, match=r"pixels \[N, 32, 32, 3\].*\(2, 16, 16, 3\)"):
        model.encode_image(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model.encode_text(np.full((1, 4), 5000))


def test_text_kv_cache_equals_whole_sequence(tmp_path):
    """encode_text_prefix + encode_text_after_prefix == encode_text_embeddings of the concatenation (1e-5),
    with per-class prefix lengths (padding after each prefix masked) and a broadcast batch of suffixes."""
    import jax
    import jax.numpy as jnp

    from aape_jax.clip.model import CLIP

    m = clip.load(tiny.write_checkpoint(tmp_path / "ckpt"))
    module, params = m.module, m.params
    w = m.config.text.hidden_size
    rng = np.random.default_rng(0)
    c, p, s, b = 3, 6, 3, 2
    prefix = jnp.asarray(rng.normal(0, 0.02, (c, p, w)).astype(np.float32))
    suffix = jnp.asarray(rng.normal(0, 0.02, (b, c, s, w)).astype(np.float32))
    length = jnp.asarray([6, 2, 4])
    # Jitted: op by op, the tower's many small ops take half a minute on two cores.
    apply = jax.jit(module.apply, static_argnames="method")
    caches = apply({"params": params}, prefix, length, method=CLIP.encode_text_prefix)
    got = apply({"params": params}, suffix, caches, method=CLIP.encode_text_after_prefix)  # [B, C, D]
    assert got.shape == (b, c, m.config.projection_dim)
    for ci in range(c):
        n = int(length[ci])
        seq = jnp.concatenate([jnp.broadcast_to(prefix[ci, :n], (b, n, w)), suffix[:, ci]], axis=1)  # [B, n+S, W]
        want = apply({"params": params}, seq, jnp.full((b,), n + s - 1), method=CLIP.encode_text_embeddings)
        np.testing.assert_allclose(np.asarray(got[:, ci]), np.asarray(want), rtol=0, atol=1e-5)
