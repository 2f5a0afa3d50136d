"""The frozen language models (`aape_jax.lm`) against transformers' PyTorch models on the same random weights:
logits (plain ids, a soft prefix through `inputs_embeds`, left and right padding), greedy and beam search
`generate`, the KV cache against the uncached forward, top-p sampling, one trace per decode loop, and the
loader's errors. Checkpoints are written by transformers' `save_pretrained`, as users have them."""

import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from aape_jax import hf_weights, lm
from aape_jax.lm import generate as gen
from aape_jax.lm import tiny
from aape_jax.lm.language_model import LanguageModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = 3  # the special ids of the transformers-made checkpoints below
PAD = 2  # not 0: transformers' beam search fills with `pad_token_id or eos`, so a pad id of 0 becomes EOS


def _hf_config(family: str):
    """Each family at (or near) a real geometry; fewer layers and a small vocabulary keep it quick."""
    ids = dict(bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    if family == "gpt2":  # GPT-2 small's width, heads and vocabulary
        return transformers.GPT2Config(vocab_size=50257, n_embd=768, n_layer=2, n_head=12, n_positions=64, **ids)
    if family == "gptj":  # GPT-J's head width (256) and rotary_dim (64) on a narrower stream
        return transformers.GPTJConfig(vocab_size=1000, n_embd=512, n_layer=2, n_head=2, rotary_dim=64,
                                       n_positions=64, **ids)
    if family == "llama":  # Llama 3.2 1B: 2048 wide, 32 heads, 8 KV heads, 8192 MLP, llama3 RoPE
        return transformers.LlamaConfig(
            vocab_size=1000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=1, num_attention_heads=32,
            num_key_value_heads=8, rms_norm_eps=1e-5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, **ids)
    if family == "qwen2":  # Qwen2.5 0.5B: 896 wide, 14 heads, 2 KV heads, q/k/v biases, tied head
        return transformers.Qwen2Config(
            vocab_size=1000, hidden_size=896, intermediate_size=4864, num_hidden_layers=2, num_attention_heads=14,
            num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True, **ids)
    if family == "mistral":  # a sliding window shorter than the test sequences
        return transformers.MistralConfig(
            vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, sliding_window=4, **ids)
    raise ValueError(family)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights with O(1) effects: matrices ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.1), biases N(0, 0.1),
    embeddings N(0, 4/width) (a tied head then gives logits of a few units); so a dropped bias, a missing
    norm scale or a wrong rotation moves the logits."""
    gen_ = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and ("wte" in name or "wpe" in name or "embed_tokens" in name):
                p.copy_(torch.randn(p.shape, generator=gen_) * 2 * p.shape[1] ** -0.5)
            elif p.ndim == 2:
                fan_in = p.shape[0] if ".c_" in name else p.shape[1]  # GPT-2's Conv1D stores (in, out)
                p.copy_(torch.randn(p.shape, generator=gen_) * fan_in**-0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen_) * 0.1)
            else:
                p.copy_(1 + torch.randn(p.shape, generator=gen_) * 0.1)


def write_hf(directory, family: str, seed: int = 0, **config_overrides):
    config = _hf_config(family)
    for k, v in config_overrides.items():
        setattr(config, k, v)
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomise(model, seed)
    model.eval()
    model.save_pretrained(directory)
    shutil.copy(os.path.join(TINY[family], "tokenizer.json"), directory)
    return model


FAMILIES = ("gpt2", "gptj", "llama", "qwen2", "mistral")
TINY = {}


@pytest.fixture(scope="module", autouse=True)
def tiny_tokenizers(tmp_path_factory):
    """A tokenizer.json per family (from `lm.tiny`), with the special ids EOS/PAD placed as above."""
    for family in FAMILIES:
        directory = tmp_path_factory.mktemp(f"tok_{family}")
        tiny.write_checkpoint(directory, family)
        TINY[family] = str(directory)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """family -> (our LanguageModel, transformers' model), loaded from one save_pretrained directory."""
    cache = {}

    def get(family):
        if family not in cache:
            directory = tmp_path_factory.mktemp(f"hf_{family}")
            ref = write_hf(directory, family)
            cache[family] = (lm.load(directory), ref)
        return cache[family]

    return get


def _ids(vocab: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, min(vocab, 1000), shape).astype(np.int32)


def _torch_logits(ref, mask=None, **inputs) -> np.ndarray:
    with torch.no_grad():
        if mask is not None:
            inputs["attention_mask"] = torch.tensor(mask, dtype=torch.long)
            inputs["position_ids"] = torch.tensor(np.where(mask, np.cumsum(mask, -1) - 1, 1), dtype=torch.long)
        return ref(**inputs).logits.float().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(pair, family):
    ours, ref = pair(family)
    ids = _ids(ours.config.vocab_size, (2, 9))
    plain = np.asarray(ours.logits(ids))
    expected = _torch_logits(ref, input_ids=torch.tensor(ids, dtype=torch.long))
    assert np.abs(expected).max() > 1.0  # the weights move the logits: a small error would show
    np.testing.assert_allclose(plain, expected, atol=1e-4, rtol=0)
    # Left padding (as generate uses) and right padding: positions skip the pads, real tokens are equal.
    for side in ("left", "right"):
        mask = np.ones_like(ids, bool)
        if side == "left":
            mask[1, :4] = False
        else:
            mask[1, -4:] = False
        got = np.asarray(ours.logits(np.where(mask, ids, PAD), mask))
        want = _torch_logits(ref, mask, input_ids=torch.tensor(np.where(mask, ids, PAD), dtype=torch.long))
        np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)
    # A soft prefix through the embedding seam, as transformers' inputs_embeds.
    soft = np.random.default_rng(1).normal(0, 1, (2, 3, ours.config.hidden_size)).astype(np.float32)
    embeds = np.concatenate([soft, np.asarray(ours.embed(ids))], axis=1)
    got = np.asarray(ours.logits_from_embeds(embeds))
    want = _torch_logits(ref, inputs_embeds=torch.tensor(embeds))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(ours.embed(ids)),
                                   ref.get_input_embeddings()(torch.tensor(ids, dtype=torch.long)).numpy(), atol=0)


def _hf_generate(ref, ids, mask, steps, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask).long(),
                           max_new_tokens=steps, pad_token_id=PAD, eos_token_id=EOS, **kwargs).numpy()
    out = out[:, ids.shape[1]:]
    return np.pad(out, ((0, 0), (0, steps - out.shape[1])), constant_values=PAD)


def _left_padded(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.ones_like(ids, bool)
    mask[0, :3] = False
    return np.where(mask, ids, PAD), mask


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "mistral"])
def test_greedy_and_beam_equal_transformers(pair, family):
    ours, ref = pair(family)
    ids, mask = _left_padded(_ids(ours.config.vocab_size, (3, 7), seed=2))
    steps = 8
    np.testing.assert_array_equal(ours.generate(ids, mask, max_new_tokens=steps),
                                  _hf_generate(ref, ids, mask, steps, do_sample=False))
    np.testing.assert_array_equal(ours.generate(ids, mask, max_new_tokens=steps, method="beam", num_beams=3),
                                  _hf_generate(ref, ids, mask, steps, do_sample=False, num_beams=3))


@pytest.fixture(scope="module")
def eos_prone(tmp_path_factory):
    """GPT-J whose head favours EOS enough that rows and beams finish at different steps."""
    directory = tmp_path_factory.mktemp("gptj_eos")
    ref = write_hf(directory, "gptj", seed=3)
    with torch.no_grad():
        ref.lm_head.bias[EOS] += 3.0
    ref.save_pretrained(directory)
    return lm.load(directory), ref


def test_eos_handling_equals_transformers(eos_prone):
    ours, ref = eos_prone
    ids, mask = _left_padded(_ids(1000, (6, 6), seed=4))
    steps = 12
    greedy = ours.generate(ids, mask, max_new_tokens=steps)
    np.testing.assert_array_equal(greedy, _hf_generate(ref, ids, mask, steps, do_sample=False))
    finished = [row for row in greedy if EOS in row.tolist()]
    assert finished and any(row.tolist().index(EOS) < steps - 1 for row in finished), greedy  # EOS mid-way
    for row in finished:  # after EOS, only padding
        assert set(row[row.tolist().index(EOS) + 1:].tolist()) <= {PAD}
    for beams, penalty in ((2, 1.0), (4, 1.0), (4, 0.5), (3, 2.0)):
        got = ours.generate(ids, mask, max_new_tokens=steps, method="beam", num_beams=beams, length_penalty=penalty)
        np.testing.assert_array_equal(got, _hf_generate(ref, ids, mask, steps, do_sample=False, num_beams=beams,
                                                        length_penalty=penalty))
    assert ours.decode(greedy)[0] == ours.tokenizer.backend.decode(
        greedy[0][:greedy[0].tolist().index(EOS)] if EOS in greedy[0].tolist() else greedy[0])


def test_generate_from_soft_prefix_equals_transformers(pair):
    ours, ref = pair("qwen2")
    ids = _ids(1000, (2, 5), seed=5)
    soft = np.random.default_rng(6).normal(0, 1, (2, 4, ours.config.hidden_size)).astype(np.float32)
    embeds = np.concatenate([soft, np.asarray(ours.embed(ids))], axis=1)
    got = ours.generate_from_embeds(embeds, max_new_tokens=6)
    with torch.no_grad():
        want = ref.generate(inputs_embeds=torch.tensor(embeds), attention_mask=torch.ones(2, 9, dtype=torch.long),
                            max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=EOS).numpy()
    np.testing.assert_array_equal(got, np.pad(want, ((0, 0), (0, 6 - want.shape[1])), constant_values=PAD))


@pytest.mark.parametrize("family", ["gpt2", "gptj", "mistral"])
def test_cached_steps_equal_the_uncached_forward(pair, family):
    """Prefill + one cached step per token gives the logits of the whole sequence run at once
    (Mistral's window of 4 is shorter than the sequence)."""
    ours = pair(family)[0] if family == "mistral" else lm.load(TINY[family])
    ids, mask = _left_padded(_ids(ours.tokenizer.vocab_size, (2, 6), seed=7))
    new = _ids(ours.tokenizer.vocab_size, (2, 4), seed=8)
    full_ids = np.concatenate([ids, new], 1)
    full_mask = np.concatenate([mask, np.ones_like(new, bool)], 1)
    full = np.asarray(ours.logits(full_ids, full_mask))
    dec = gen.CachedDecoder(ours.params, gen.Settings(ours.config, jnp.float32, new.shape[1], "greedy"))
    logits, caches, key_valid, positions = jax.jit(dec.prefill)(ours.embed(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(logits), full[:, ids.shape[1] - 1], atol=1e-4, rtol=0)
    step = jax.jit(dec.step)
    for i in range(new.shape[1]):
        logits, caches, key_valid = step(jnp.asarray(new[:, i]), caches, key_valid, ids.shape[1] + i, positions + i)
        np.testing.assert_allclose(np.asarray(logits), full[:, ids.shape[1] + i], atol=1e-4, rtol=0)


def test_one_trace_per_decode_loop(pair, monkeypatch):
    ours, _ = pair("mistral")
    monkeypatch.setattr(gen, "decode", chex.assert_max_traces(gen.decode, n=1))
    model = LanguageModel(ours.params, ours.config, ours.tokenizer)
    for seed in range(3):  # new prompts, seeds and top_p values of the same shapes: no retrace
        ids = _ids(1000, (2, 5), seed=seed)
        model.generate(ids, max_new_tokens=6, method="top_p", top_p=0.5 + 0.2 * seed, seed=seed)
    chex.clear_trace_counter()


def test_top_p(pair):
    ours, _ = pair("mistral")
    ids = _ids(1000, (3, 5), seed=9)
    greedy = ours.generate(ids, max_new_tokens=6)
    # A nucleus of one token is greedy decoding, whatever the seed.
    np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=6, method="top_p", top_p=1e-6, seed=5), greedy)
    # A temperature near 0 sharpens the whole vocabulary onto the argmax.
    np.testing.assert_array_equal(
        ours.generate(ids, max_new_tokens=6, method="top_p", top_p=1.0, temperature=1e-4, seed=3), greedy)
    hot = dict(max_new_tokens=6, method="top_p", top_p=1.0, temperature=5.0)
    a, b = ours.generate(ids, seed=1, **hot), ours.generate(ids, seed=1, **hot)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ours.generate(ids, seed=2, **hot))
    # The nucleus: the most likely tokens whose mass first reaches top_p, as transformers' TopPLogitsWarper.
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
    for top_p, kept in ((0.4, [1]), (0.7, [1, 3]), (0.8, [1, 3]), (0.85, [1, 2, 3]), (1.0, [0, 1, 2, 3])):
        filtered = np.asarray(gen._top_p_filter(logits, jnp.float32(top_p)))[0]
        assert np.flatnonzero(np.isfinite(filtered)).tolist() == kept, (top_p, filtered)


def test_tiny_checkpoints_load_in_transformers_alike(tmp_path):
    """`python -m aape_jax.lm.tiny` writes what transformers reads: same ids from the tokenizer, same logits."""
    texts = ["a photo of a dog", "question : what colour is the bus ? answer :", "two"]
    out = subprocess.run([sys.executable, "-m", "aape_jax.lm.tiny", str(tmp_path / "cli"), "--family", "llama"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for family in FAMILIES:
        directory = str(tmp_path / "cli") if family == "llama" else TINY[family]
        ours = lm.load(directory)
        ref = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        tok.padding_side = "left"
        tok.pad_token = tok.pad_token or tok.eos_token
        ids, mask = ours.encode(texts)
        want = tok(texts, padding=True, return_tensors="np")
        np.testing.assert_array_equal(mask, want["attention_mask"].astype(bool))
        np.testing.assert_array_equal(ids[mask], want["input_ids"][mask])
        assert ours.tokenizer.decode(ids[1:2]) == [tok.decode(want["input_ids"][1], skip_special_tokens=True)]
        if family == "llama":
            assert ids[1, 0] == ours.config.bos_token_id  # the post-processor's <s> (row 1: the longest)
        got = np.asarray(ours.logits(ids, mask))
        np.testing.assert_allclose(got[mask], _torch_logits(ref, mask, input_ids=torch.tensor(ids).long())[mask],
                                   atol=1e-4, rtol=0)


def test_old_exports_and_other_weight_files(tmp_path, pair):
    """GPT-2 as the hub has it (no `transformer.` prefix, attention-mask buffers, vocab.json + merges.txt),
    bfloat16 and sharded checkpoints load; the logits do not change."""
    ours, ref = pair("gpt2")
    ids = _ids(1000, (1, 6))
    expected = np.asarray(ours.logits(ids))
    old = tmp_path / "old_gpt2"
    shutil.copytree(ours.source, old)
    state = load_file(old / hf_weights.SAFETENSORS)
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    state["h.0.attn.masked_bias"] = np.asarray(-1e4, np.float32)
    save_file(state, old / hf_weights.SAFETENSORS)
    backend = ours.tokenizer.backend
    backend.model.save(str(old))  # vocab.json + merges.txt
    os.remove(old / "tokenizer.json")
    old_model = lm.load(old)
    np.testing.assert_allclose(np.asarray(old_model.logits(ids)), expected, atol=1e-6)
    text = ["a photo of a dog running on the grass"]
    np.testing.assert_array_equal(old_model.tokenize(text), ours.tokenize(text))

    half = tmp_path / "bf16"
    ref.to(torch.bfloat16).save_pretrained(half, max_shard_size="20MB")  # bfloat16 and sharded
    ref.float()
    shutil.copy(os.path.join(ours.source, "tokenizer.json"), half)
    assert os.path.isfile(half / hf_weights.SAFETENSORS_INDEX)
    loaded = lm.load(half, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(loaded.params)} == {jnp.dtype(jnp.bfloat16)}
    got = np.asarray(loaded.logits(ids))
    assert got.dtype == np.float32
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99  # bf16 rounding, not a different model
    fp32_params = lm.load(half)  # bf16 weights, fp32 compute: the same as fp32 weights rounded once
    assert np.abs(np.asarray(fp32_params.logits(ids)) - expected).max() < 0.5


def _broken(tmp_path, source: str, edit) -> str:
    target = tmp_path / "broken"
    shutil.copytree(source, target)
    state = dict(load_file(target / hf_weights.SAFETENSORS))
    edit(state)
    save_file(state, target / hf_weights.SAFETENSORS)
    return str(target)


def test_bad_checkpoints_are_named(tmp_path):
    source = TINY["llama"]
    cases = {
        "missing": (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"),
                    "does not fill:\n  model.layers.1.mlp.up_proj.weight"),
        "renamed": (lambda s: s.update({"model.layers.0.attn.q.weight": s.pop("model.layers.0.self_attn.q_proj.weight")}),
                    "model.layers.0.attn.q.weight"),
        "shape": (lambda s: s.update({"model.norm.weight": np.ones(65, np.float32)}),
                  "model.norm.weight: checkpoint (65,), model expects (64,)"),
    }
    for name, (edit, message) in cases.items():
        directory = _broken(tmp_path / name, source, edit)
        with pytest.raises(ValueError, match="model.safetensors does not match") as e:
            lm.load(directory)
        assert message in str(e.value), (name, str(e.value))
    renamed = str(pytest.raises(ValueError, lm.load, _broken(tmp_path / "r2", source, cases["renamed"][0])).value)
    assert "model.layers.0.self_attn.q_proj.weight" in renamed  # the unfilled parameter, by its checkpoint name

    def rewrite_config(name, **changes):
        target = tmp_path / name
        shutil.copytree(source, target)
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **changes}))
        return target

    with pytest.raises(ValueError, match=r"config.json: model_type 'falcon' is not supported; supported: gpt2"):
        lm.load(rewrite_config("falcon", model_type="falcon"))
    with pytest.raises(ValueError, match=r"tokenizer.json has 4\d\d token ids but the embedding table of .*config.json "
                                         r"has 400 rows"):
        lm.load(rewrite_config("small_table", vocab_size=400))
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        lm.load(rewrite_config("yarn", rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    no_tokenizer = rewrite_config("no_tokenizer")
    os.remove(no_tokenizer / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer in .*: expected tokenizer.json"):
        lm.load(no_tokenizer)
    truncated = rewrite_config("truncated")
    data = (truncated / hf_weights.SAFETENSORS).read_bytes()
    (truncated / hf_weights.SAFETENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read weights file .*model.safetensors \(truncated or corrupt\?\)"):
        lm.load(truncated)


def test_bad_calls_are_named():
    model = lm.load(TINY["gpt2"])
    with pytest.raises(ValueError, match="token id 512 is outside the embedding table of 512 rows"):
        model.logits(np.array([[1, 512]]))
    ids, mask = model.encode(["a photo", "a photo of a dog"], padding_side="right")
    with pytest.raises(ValueError, match="generate needs left padding"):
        model.generate(ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="method must be one of greedy, beam, top_p"):
        model.generate(ids, max_new_tokens=2, method="sample")
    with pytest.raises(ValueError, match="exceed this gpt2 model's 128 learned positions"):
        model.generate(ids, max_new_tokens=127)
    with pytest.raises(ValueError, match="embeds must be"):
        model.logits_from_embeds(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(TypeError, match="list of strings"):
        model.encode("a photo")
