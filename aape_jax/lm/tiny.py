"""Randomly initialised decoder checkpoints in Hugging Face format, made offline.

No pretrained language model can be downloaded where tests, the offline
configs and the benchmarks run, so they write one here (config.json,
model.safetensors, tokenizer.json with a small byte-level BPE learned from a
built-in corpus, tokenizer_config.json) and load it through the same
`lm.load` path a real checkpoint takes. transformers loads the same directory
(`AutoModelForCausalLM`, `AutoTokenizer`).

    python -m aape_jax.lm.tiny DIR --family gpt2|gptj|llama|mistral|qwen2 [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import numpy as np
import tokenizers
from safetensors.numpy import save_file

from aape_jax import hf_weights
from aape_jax.lm import config as config_lib
from aape_jax.lm import weights
from aape_jax.lm.config import LMConfig, RopeConfig

FAMILIES = ("gpt2", "gptj", "llama", "mistral", "qwen2")
TOKENIZER_SIZE = 512  # rows of the tiny embedding table; the BPE learns at most this many ids (~500)

# The special tokens each family's real tokenizer uses, and whether it starts every text with BOS.
_SPECIALS = {
    "gpt2": dict(tokens=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False),
    "gptj": dict(tokens=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False),
    "llama": dict(tokens=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None, add_bos=True),
    "mistral": dict(tokens=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None, add_bos=True),
    "qwen2": dict(tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|endoftext|>",
                  pad="<|endoftext|>", add_bos=False),
}

# Caption-like sentences, so prompts tokenise into words rather than bytes.
_CORPUS = (
    "a photo of a dog running on the grass .",
    "a picture of a red car parked in front of a house .",
    "two people riding bikes down a city street .",
    "a cat sitting on a wooden table next to a window .",
    "a plate of food with rice , vegetables and meat .",
    "a man holding an umbrella in the rain .",
    "question : what colour is the bus ? answer : yellow",
    "question : how many birds are in the sky ? answer : three",
    "a small boat on a lake with mountains in the background .",
    "a group of children playing football in a park .",
    "a woman standing in a kitchen cooking dinner .",
    "an airplane flying over the clouds at sunset .",
)


def geometry(family: str, **overrides: Any) -> LMConfig:
    """The tiny geometry of `family` (width 64, 2 layers, 4 heads), with `overrides` replacing fields."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    common = dict(model_type=family, vocab_size=TOKENIZER_SIZE, hidden_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=4, head_dim=16, intermediate_size=128, max_positions=128)
    if family == "gpt2":
        config = LMConfig(**common, norm_eps=1e-5, hidden_act="gelu_new", rope=None, qkv_bias=True, out_bias=True,
                          mlp_bias=True, tie_word_embeddings=True)
    elif family == "gptj":
        # GPT-J pads its table past the tokenizer (50400 rows, 50257 ids): so does this one.
        config = LMConfig(**{**common, "vocab_size": TOKENIZER_SIZE + 64}, norm_eps=1e-5, hidden_act="gelu_new",
                          rope=RopeConfig(dim=8, interleaved=True), mlp_bias=True, lm_head_bias=True)
    else:
        config = LMConfig(**{**common, "num_kv_heads": 2, "vocab_size": TOKENIZER_SIZE + 64 * (family == "qwen2")},
                          norm_eps=1e-6, hidden_act="silu", rope=RopeConfig(dim=16, theta=10000.0),
                          qkv_bias=family == "qwen2", tie_word_embeddings=family == "qwen2",
                          sliding_windows=(4096 if family == "mistral" else None,) * 2)
    config = dataclasses.replace(config, **overrides)
    if len(config.sliding_windows) != config.num_layers:
        config = dataclasses.replace(config, sliding_windows=(config.sliding_windows[:1] or (None,)) * config.num_layers)
    return config


def random_params(config: LMConfig, seed: int = 0) -> dict:
    """Random parameters drawn in numpy: kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02), biases 0, norms 1."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in weights.expected_shapes(config).items():
        leaf = path[-1]
        if leaf == "bias":
            flat[path] = np.zeros(shape, np.float32)
        elif leaf == "scale":
            flat[path] = np.ones(shape, np.float32)
        elif leaf == "kernel":
            flat[path] = rng.normal(0.0, shape[0] ** -0.5, shape).astype(np.float32)
        else:
            flat[path] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    return flax.traverse_util.unflatten_dict(flat)


def _train_tokenizer(family: str, corpus: Iterable[str]) -> tokenizers.Tokenizer:
    specials = _SPECIALS[family]
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE, special_tokens=specials["tokens"], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(corpus), trainer=trainer)
    if specials["add_bos"]:
        bos = specials["bos"]
        backend.post_processor = tokenizers.processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    else:
        backend.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    return backend


def write_checkpoint(directory: str | os.PathLike, family: str = "gpt2", seed: int = 0,
                     params: Mapping | None = None, corpus: Iterable[str] = (), **overrides: Any) -> str:
    """Writes a random (or `params`) decoder of `family` in Hugging Face format; returns the directory.

    Args:
      directory: created if needed; existing checkpoint files are replaced.
      family: one of `FAMILIES`.
      seed: parameter initialisation seed.
      params: a Flax parameter tree of this geometry (default: random from `seed`).
      corpus: extra texts the tokenizer learns merges from.
      **overrides: `LMConfig` fields replacing the tiny geometry's (e.g. hidden_size=768, vocab_size=50257).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    backend = _train_tokenizer(family, [*_CORPUS, *corpus] * 4)
    specials = _SPECIALS[family]
    ids = {name: None if specials[name] is None else backend.token_to_id(specials[name]) for name in ("bos", "eos", "pad")}
    config = geometry(family, bos_token_id=ids["bos"], eos_token_ids=(ids["eos"],), pad_token_id=ids["pad"],
                      **overrides)
    if backend.get_vocab_size() > config.vocab_size:
        raise ValueError(f"vocab_size {config.vocab_size} is smaller than the tokenizer's {backend.get_vocab_size()} ids")
    backend.save(os.path.join(directory, "tokenizer.json"))
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.max_positions,
                        "clean_up_tokenization_spaces": False,
                        **{f"{name}_token": specials[name] for name in ("bos", "eos", "pad") if specials[name]}}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
    params = random_params(config, seed) if params is None else params
    save_file(weights.to_state_dict(params, config), os.path.join(directory, hf_weights.SAFETENSORS))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config_lib.to_hf_dict(config), f, indent=2)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aape_jax.lm.tiny", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--family", default="gpt2", choices=FAMILIES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_checkpoint(args.directory, args.family, args.seed))


if __name__ == "__main__":
    main()
