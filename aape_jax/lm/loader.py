"""`load()`: a Hugging Face format decoder checkpoint (local directory or hub id) -> `LanguageModel`."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from aape_jax import hf_weights, hub
from aape_jax.lm import weights
from aape_jax.lm.config import read_config
from aape_jax.lm.language_model import LanguageModel
from aape_jax.lm.tokenizer import Tokenizer

_HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]


def resolve(path_or_id: str | os.PathLike) -> str:
    """A local checkpoint directory for `path_or_id`, downloading a hub id when online."""
    return hub.resolve(path_or_id, "language model checkpoint", "config.json, model.safetensors (or a sharded "
                       "index), tokenizer.json", allow_patterns=_HUB_FILES)


def load(path_or_id: str | os.PathLike, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> LanguageModel:
    """Loads a frozen causal LM (GPT-2, GPT-J, Llama, Mistral, Qwen2) from a Hugging Face directory or hub id.

    Args:
      path_or_id: directory with config.json, model.safetensors (or a sharded index, or
        pytorch_model.bin, which needs torch) and tokenizer.json; or a hub id such as
        "gpt2", "EleutherAI/gpt-j-6b", "Qwen/Qwen2.5-0.5B" (needs network access).
      dtype: compute dtype (jnp.bfloat16 on accelerators); attention softmax and norms run in float32.
      param_dtype: dtype the parameters are stored in (float32, or bfloat16 to halve memory).
    """
    directory = resolve(path_or_id)
    config = read_config(directory)
    tokenizer = Tokenizer.from_dir(directory, config)
    state, weights_file = hf_weights.read_state_dict(directory)
    params = jax.device_put(weights.convert(state, config, source=weights_file, param_dtype=param_dtype))
    logging.info("loaded %s language model from %s (%s)", config.model_type, directory, weights_file)
    return LanguageModel(params, config, tokenizer, dtype=dtype, source=directory)
