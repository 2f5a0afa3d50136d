"""Hugging Face decoder checkpoint <-> Flax parameter tree, in numpy.

Conversion is renaming (`h.3` -> `h_3`, `layers.3` -> `layers_3`; `weight` ->
`kernel` / `embedding` / `scale`) plus transposing Linear weights
`(out, in)` -> `(in, out)`; GPT-2's `Conv1D` already stores `(in, out)`.
It is strict like the CLIP loader: unused tensors, unfilled parameters and
shape mismatches are all named. Tolerated: the buffers older exports carry
(`attn.bias`, `attn.masked_bias`, `rotary_emb.inv_freq`), GPT-2 exports
without the `transformer.` prefix, and a copy of a tied output head.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from aape_jax import hf_weights
from aape_jax.lm.config import LMConfig
from aape_jax.lm.model import CausalLM

_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$|\.rotary_emb\.inv_freq$|\.embed_positions$")
_LAYER = re.compile(r"\.(h|layers)\.(\d+)\.")
_EMBEDDINGS = {"wte", "wpe", "embed_tokens"}
_NORMS = {"ln_1", "ln_2", "ln_f", "input_layernorm", "post_attention_layernorm", "norm"}
_CONV1D = {"c_attn", "c_proj", "c_fc"}  # GPT-2 stores these (in, out)
_GPT2_TOP = ("wte.", "wpe.", "h.", "ln_f.")


def _canonical(key: str, config: LMConfig) -> str:
    if config.family == "gpt2" and key.startswith(_GPT2_TOP):
        return "transformer." + key
    return key


def _to_flax(key: str, value: np.ndarray, config: LMConfig) -> tuple[tuple[str, ...], np.ndarray]:
    """One checkpoint tensor -> (Flax parameter path, value in Flax layout)."""
    *module, leaf = _LAYER.sub(r".\1_\2.", key).split(".")
    owner = module[-1] if module else ""
    if leaf != "weight":
        return (*module, leaf), value
    if owner in _EMBEDDINGS:
        return (*module, "embedding"), value
    if owner in _NORMS:
        return (*module, "scale"), value
    if config.family == "gpt2" and owner in _CONV1D:
        return (*module, "kernel"), value
    return (*module, "kernel"), value.T


def _hf_key(path: tuple[str, ...]) -> str:
    *module, leaf = path
    name = ".".join([*module, "weight" if leaf in ("embedding", "scale", "kernel") else leaf])
    return re.sub(r"\.(h|layers)_(\d+)\.", r".\1.\2.", name)


def _to_hf_layout(path: tuple[str, ...], value: np.ndarray, config: LMConfig) -> np.ndarray:
    conv = config.family == "gpt2" and len(path) > 1 and path[-2] in _CONV1D
    return value.T if path[-1] == "kernel" and not conv else value


def expected_shapes(config: LMConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every Flax parameter path of `CausalLM(config)` with its shape (no compute)."""
    abstract = jax.eval_shape(
        lambda key: CausalLM(config).init(key, jnp.zeros((1, 1, config.hidden_size)), jnp.zeros((1, 1), jnp.int32),
                                          jnp.ones((1, 1), bool), method=_init_all),
        jax.random.key(0))["params"]
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(abstract).items()}


def _init_all(model: CausalLM, embeds, positions, key_valid):
    """Touches every parameter: the token table (through `embed`) and the forward pass."""
    model.embed(positions)
    return model(embeds, positions, key_valid)


def convert(state: Mapping[str, np.ndarray], config: LMConfig, source: str = "checkpoint",
            param_dtype: Any = jnp.float32) -> dict:
    """HF state dict (name -> numpy) -> nested Flax `params` in `param_dtype`, strictly.

    Raises:
      ValueError: naming the unused checkpoint keys, the parameters left unfilled
        (by their checkpoint names) and every shape mismatch.
    """
    expected = expected_shapes(config)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unused, mismatched = [], []
    seen: set[tuple[str, ...]] = set()
    for key, value in state.items():
        if _BUFFERS.search(key) or (config.tie_word_embeddings and key == "lm_head.weight"):
            continue
        path, converted = _to_flax(_canonical(key, config), np.asarray(value), config)
        if path not in expected:
            unused.append(key)
            continue
        seen.add(path)
        if tuple(converted.shape) != expected[path]:
            want = _to_hf_layout(path, np.empty(expected[path], dtype=np.uint8), config).shape
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {tuple(want)}")
        else:
            flat[path] = np.asarray(converted, dtype=param_dtype)
    missing = [_hf_key(p) for p in expected if p not in seen]
    hf_weights.raise_if_mismatched(source, config.model_type, mismatched, unused, missing)
    return flax.traverse_util.unflatten_dict(flat)


def to_state_dict(params: Mapping, config: LMConfig) -> dict[str, np.ndarray]:
    """Nested Flax `params` -> HF state dict (name -> float32 numpy), as transformers saves it."""
    return {_hf_key(path): np.array(_to_hf_layout(path, np.asarray(value, np.float32), config), order="C")
            for path, value in flax.traverse_util.flatten_dict(dict(params)).items()}
