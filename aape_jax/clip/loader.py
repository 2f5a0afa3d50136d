"""`load()`: a Hugging Face format CLIP checkpoint (local directory or hub id) -> `FrozenCLIP`."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from aape_jax import hf_weights, hub
from aape_jax.clip import weights
from aape_jax.clip.config import read_config
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.preprocess import ImageTransform
from aape_jax.clip.tokenizer import Tokenizer

_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt",
              "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]


def resolve(path_or_id: str | os.PathLike) -> str:
    """A local checkpoint directory for `path_or_id`, downloading a hub id when online."""
    return hub.resolve(path_or_id, "CLIP checkpoint", "config.json, model.safetensors, vocab.json, merges.txt, "
                       "preprocessor_config.json", allow_patterns=_HUB_FILES)


def load(path_or_id: str | os.PathLike, dtype: Any = jnp.float32, max_batch: int = 256) -> FrozenCLIP:
    """Loads a frozen CLIP from a Hugging Face format directory or hub id.

    Args:
      path_or_id: directory with config.json, model.safetensors (or a sharded
        index, or pytorch_model.bin, which needs torch), vocab.json,
        merges.txt and preprocessor_config.json; or a hub id such as
        "openai/clip-vit-base-patch16" (needs network access).
      dtype: compute dtype of the towers; parameters stay float32.
      max_batch: largest chunk per jitted encoder call.
    """
    directory = resolve(path_or_id)
    config = read_config(directory)
    state, weights_file = hf_weights.read_state_dict(directory)
    params = jax.device_put(weights.convert(state, config, source=weights_file))
    tokenizer = Tokenizer.from_dir(directory, config.text.context_length, config.text.vocab_size)
    if tokenizer.eot_id != config.text.eot_token_id:
        raise ValueError(
            f"{directory}: the tokenizer's <|endoftext|> id is {tokenizer.eot_id} but config.json's "
            f"text_config.eos_token_id resolves to {config.text.eot_token_id}"
        )
    transform = ImageTransform.from_preprocessor_config(
        os.path.join(directory, "preprocessor_config.json"), config.vision.image_size
    )
    logging.info("loaded CLIP from %s (%s)", directory, weights_file)
    return FrozenCLIP(params, config, tokenizer, transform, dtype=dtype, source=directory,
                      weights_file=weights_file, max_batch=max_batch)
