"""Flax SigLIP == transformers' PyTorch SiglipModel on random weights of the real geometries; strict loading."""

import json
import logging
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipTokenizer

from aape_jax import AAPEClassifier, clip, train, zeroshot
from aape_jax.clip import tiny, weights
from aape_jax.clip.backbone import backbone
from aape_jax.clip.config import from_hf_dict
from aape_jax.clip.siglip_tokenizer import write_tiny_siglip_tokenizer
from aape_jax.configs import classification
from aape_jax.data import protocol
from aape_jax.data.text_features import class_text
from aape_jax.models.heads import TokenHead
from aape_jax.numerics import l2_normalize
from aape_jax.train_step import make_logits_fn

# transformers' configs of the hub checkpoints (google/siglip-base-patch16-224,
# google/siglip-so400m-patch14-384, google/siglip2-base-patch16-224); `layers` caps
# both towers' depth where the full model would not fit a test's memory and time.
GEOMETRIES = {
    "siglip-base-patch16-224": dict(
        text=dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_attention_heads=12),
        vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, image_size=224,
                    patch_size=16),
        layers=12),
    "siglip-so400m-patch14-384": dict(
        text=dict(vocab_size=32000, hidden_size=1152, intermediate_size=4304, num_attention_heads=16),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384,
                    patch_size=14),
        layers=2),
    "siglip2-base-patch16-224": dict(
        text=dict(vocab_size=256000, hidden_size=768, intermediate_size=3072, num_attention_heads=12),
        vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, image_size=224,
                    patch_size=16),
        layers=2),
}


def hf_siglip(text: dict, vision: dict, layers: int, seed: int = 0) -> SiglipModel:
    """A randomly initialised transformers SiglipModel with non-trivial norms, biases, scale and bias."""
    torch.manual_seed(seed)
    config = SiglipConfig(text_config=dict(text, num_hidden_layers=layers, max_position_embeddings=64),
                          vision_config=dict(vision, num_hidden_layers=layers))
    model = SiglipModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-3.0)
    return model.eval()


def flax_params(model: SiglipModel):
    config = from_hf_dict(model.config.to_dict(), source="hf")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return config, weights.convert(state, config, source="hf")


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_parity_with_transformers_real_geometries(name):
    g = GEOMETRIES[name]
    hf = hf_siglip(g["text"], g["vision"], g["layers"])
    config, params = flax_params(hf)
    assert config.family == "siglip" and config.projection_dim == g["vision"]["hidden_size"]
    rng = np.random.default_rng(0)
    r = g["vision"]["image_size"]
    pixels = rng.uniform(-1, 1, (2, r, r, 3)).astype(np.float32)
    ids = rng.integers(0, g["text"]["vocab_size"], (3, 64)).astype(np.int32)
    module = backbone(config)
    zi, grid = module.apply({"params": params}, pixels, method="encode_image_grid")
    zt = module.apply({"params": params}, ids, method="encode_text")
    with torch.no_grad():
        px, ti = torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(ids.astype(np.int64))
        vision_out = hf.vision_model(pixel_values=px)
        ref_zt = hf.text_model(input_ids=ti).pooler_output.numpy()
        ref_logits = hf(input_ids=ti, pixel_values=px).logits_per_image.numpy()
    np.testing.assert_allclose(np.asarray(zi), vision_out.pooler_output.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(grid), vision_out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(zt), ref_zt, atol=1e-4, rtol=0)
    n = lambda z: z / np.linalg.norm(z, axis=-1, keepdims=True)
    logits = np.exp(params["logit_scale"]) * n(np.asarray(zi)) @ n(np.asarray(zt)).T + params["logit_bias"]
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-5)


def test_embeddings_seam_equals_plain_text_path():
    g = GEOMETRIES["siglip-base-patch16-224"]
    hf = hf_siglip(dict(g["text"], vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4),
                   dict(g["vision"], hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32,
                        patch_size=8), layers=2)
    config, params = flax_params(hf)
    module = backbone(config)
    ids = np.random.default_rng(1).integers(0, 300, (4, 64)).astype(np.int32)
    x = module.apply({"params": params}, ids, method="embed_tokens")
    seam = module.apply({"params": params}, x, np.zeros(4, np.int32), method="encode_text_embeddings")
    np.testing.assert_allclose(seam, module.apply({"params": params}, ids, method="encode_text"), atol=1e-6)
    with pytest.raises(ValueError, match="causal"):
        module.apply({"params": params}, x, np.full(4, 3), method="encode_text_prefix")


def _small_state():
    hf = hf_siglip(dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4),
                   dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32, patch_size=8),
                   layers=2)
    config = from_hf_dict(hf.config.to_dict(), source="hf")
    return config, {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def test_strict_conversion_names_unused_missing_and_mismatched_keys():
    config, state = _small_state()
    state["vision_model.head.extra.weight"] = np.zeros(3, np.float32)
    del state["vision_model.head.probe"]
    state["text_model.head.weight"] = np.zeros((5, 64), np.float32)
    with pytest.raises(ValueError) as e:
        weights.convert(state, config, source="model.safetensors")
    msg = str(e.value)
    assert "SigLIP" in msg and "model.safetensors" in msg
    assert "vision_model.head.extra.weight" in msg
    assert "vision_model.head.probe" in msg
    assert "text_model.head.weight: checkpoint (5, 64), model expects (64, 64)" in msg


def test_state_dict_round_trip_keeps_siglip_layout():
    config, state = _small_state()
    params = weights.convert(state, config)
    assert np.asarray(params["logit_scale"]).shape == ()
    back = weights.to_state_dict(params, config)
    assert set(back) == set(state) - {k for k in state if k.endswith("position_ids")}
    for k, v in back.items():
        assert v.shape == state[k].shape, k
        np.testing.assert_array_equal(v, state[k])
    # torch's MultiheadAttention layout survives: the whole in_proj is one [3W, W] tensor
    assert back["vision_model.head.attention.in_proj_weight"].shape == (192, 64)
    flat = flax.traverse_util.flatten_dict(params)
    assert ("vision_model", "head", "attention", "out_proj", "kernel") in flat
    assert jax.tree.leaves(params)


# ------------------------------------------------------------------ a SigLIP checkpoint through clip.load

TEXTS = ["a photo of a cat.", "", "A Photo of the LARGE dog, with floppy ears!", "itap of a bad photo " * 12]


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return tiny.write_checkpoint(tmp_path_factory.mktemp("siglip") / "ckpt", "siglip-tiny", seed=2)


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 40), (97, 61), (30, 300))]


def test_tiny_checkpoint_loads_strictly_in_transformers_and_matches_it(tiny_siglip):
    hf, info = SiglipModel.from_pretrained(tiny_siglip, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    hf.eval()
    ours = clip.load(tiny_siglip)
    ids = ours.tokenize(TEXTS)
    want_ids = AutoTokenizer.from_pretrained(tiny_siglip)(TEXTS, padding="max_length", max_length=32,
                                                          truncation=True)["input_ids"]
    np.testing.assert_array_equal(ids, want_ids)
    pixels = ours.preprocess(_images())
    want_pixels = SiglipImageProcessorPil.from_pretrained(tiny_siglip)(_images(), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixels, want_pixels.transpose(0, 2, 3, 1), atol=1e-6, rtol=0)
    zi, zt = ours.encode_image(pixels), ours.encode_text(ids)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids.astype(np.int64)), pixel_values=torch.from_numpy(want_pixels))
    n = lambda z: z / np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(n(zi), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(n(zt), out.text_embeds.numpy(), atol=1e-5)
    weights_ = zeroshot.class_weights(ours, TEXTS, ["{}"])  # one template: each text's own embedding
    probs = zeroshot.predict(ours, _images(), weights_, progress=False)
    np.testing.assert_allclose(probs, torch.sigmoid(out.logits_per_image).numpy(), atol=1e-5)
    assert not np.allclose(probs.sum(-1), 1.0)  # per-class sigmoids, not a softmax


def test_text_must_run_at_the_full_context(tiny_siglip):
    ours = clip.load(tiny_siglip)
    with pytest.raises(ValueError, match="padded to its full context of 32"):
        ours.encode_text(ours.tokenize(["a cat"])[:, :8])


def test_spiece_checkpoint_loads(tiny_siglip, tmp_path, shared_data):
    # SigLIP v1 on the hub: spiece.model, no tokenizer.json.
    directory = tmp_path / "v1"
    shutil.copytree(tiny_siglip, directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        os.remove(directory / name)
    cupl = json.load(open(shared_data / "cupl" / "caltech101.json"))
    write_tiny_siglip_tokenizer(directory, [t for texts in cupl.values() for t in texts], 512, "spiece.model")
    ours = clip.load(directory)
    want = SiglipTokenizer.from_pretrained(directory)(TEXTS, padding="max_length", max_length=32,
                                                      truncation=True)["input_ids"]
    np.testing.assert_array_equal(ours.tokenize(TEXTS), want)
    assert ours.tokenizer.pad_id == ours.tokenizer.eot_id  # SigLIP v1 pads with </s>


def test_loader_names_bad_checkpoints(tiny_siglip, tmp_path):
    directory = tmp_path / "bad"
    shutil.copytree(tiny_siglip, directory)
    os.remove(directory / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*spiece\.model|spiece\.model.*tokenizer\.json"):
        clip.load(directory)
    config = json.load(open(directory / "config.json"))
    json.dump(dict(config, model_type="siglip2"), open(directory / "config.json", "w"))
    with pytest.raises(ValueError, match="NaFlex"):
        clip.load(directory)
    config["vision_config"]["vision_use_head"] = False
    json.dump(config, open(directory / "config.json", "w"))
    with pytest.raises(ValueError, match="vision_use_head"):
        clip.load(directory)


def _run_config(method, store, **overrides):
    config = classification.base2new("runlocal", method)
    config.update_from_flattened_dict({"feature_store": store, "num_epochs": 2, "random_clip_geometry": "siglip-tiny",
                                       **overrides})
    return config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("siglip_store"))


RUNS = {"zeroshot_clip": {}, "cupl": {}, "linear_probe": {}, "coop": {}, "cocoop": {}, "kgcoop": {},
        "aape-token-prefix": {}, "aape-token-suffix": {"model.token_position": "suffix"},
        "aape-feature": {"model.combine": "feature"}}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_method_runs_on_siglip(run, store, tmp_path, caplog):
    method = run.split("-")[0]
    with caplog.at_level(logging.WARNING):
        metrics = train.train_and_evaluate(_run_config(method, store, **RUNS[run]), str(tmp_path))
    for key in ("base_acc", "new_acc", "harmonic_mean"):
        assert 0.0 <= metrics[key] <= 100.0
    if method not in ("zeroshot_clip", "cupl"):
        assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert ("cannot be cached" in caplog.text) == (run == "aape-token-suffix")
    if method == "aape":
        clf = AAPEClassifier.load(tmp_path)
        dataset = train.load_dataset(_run_config(method, store))
        _, new = protocol.base_new_split(len(dataset.classnames))
        names = [dataset.classnames[i] for i in new]
        test = protocol.subsample(dataset.test, new)
        probs = clf.predict_proba([e.image for e in test], names)
        assert protocol.accuracy(probs.argmax(-1), [e.label for e in test]) == pytest.approx(metrics["new_acc"])
        # sigmoid(exp(scale) * cos + bias) per class: not a distribution over the classes
        assert ((probs > 0) & (probs < 1)).all() and not np.allclose(probs.sum(-1), 1.0)
        pixels = clf.clip.preprocess([e.image for e in test[:4]])
        z = clf.clip.encode_image(pixels)
        ct, cache = clf._class_list(names)
        logits = make_logits_fn(clf.model, clf.clip.module)(clf.params, z, ct, clf.clip.params,
                                                           clf.clip.params["logit_scale"], cache)
        want = jax.nn.sigmoid(logits + clf.clip.logit_bias)
        np.testing.assert_allclose(clf.predict_proba_pixels(pixels, names), want, atol=1e-6)


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_token_seam_equals_the_longer_prompt(tiny_siglip, position):
    """Real tokens inserted at the text's start (SigLIP has no [SOS]) or before [EOS] give exactly SigLIP's
    features of those ids at the full context, and the suffix head takes the whole-sequence path."""
    m = clip.load(tiny_siglip)
    names = ["cat", "large dog"]
    word = m.tokenizer.encode("itap")
    ct = class_text(m, "a photo of a {}", names, len(word))
    assert ct.text_start == 0 and ct.ids.shape[1] == m.config.text.context_length - len(word)
    tokens = m.module.apply({"params": m.params}, jnp.asarray([word]), method="embed_tokens")  # [1, T, W]
    head = TokenHead(len(word), m.config.text.hidden_size, position)
    assert head.class_cache(ct, m.module, m.params) is None
    got = head.class_weights(tokens, ct, m.module, m.params)[0]
    ids = m.tokenize([f"a photo of a {n}" for n in names])  # [C, 32]: text, [EOS], pads
    eos = m.tokenizer.eot_positions(ids)
    longer = [list(word) + row[:-len(word)] if position == "prefix" else
              row[:e] + list(word) + row[e:-len(word)] for row, e in zip(ids.tolist(), eos)]
    want = l2_normalize(jnp.asarray(m.encode_text(np.asarray(longer, np.int32))))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
