"""`load()`: a Hugging Face format CLIP or SigLIP checkpoint (local directory or hub id) -> `FrozenCLIP`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from aape_jax import hf_weights, hub
from aape_jax.clip import weights
from aape_jax.clip.config import read_config
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.preprocess import PREPROCESSOR_CONFIG_NAME, ImageTransform
from aape_jax.clip.siglip_tokenizer import SiglipTokenizer
from aape_jax.clip.tokenizer import Tokenizer

_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt",
              "tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json",
              "preprocessor_config.json"]


def resolve(path_or_id: str | os.PathLike) -> str:
    """A local checkpoint directory for `path_or_id`, downloading a hub id when online."""
    return hub.resolve(path_or_id, "CLIP checkpoint", "config.json, model.safetensors, the tokenizer (vocab.json + "
                       "merges.txt, tokenizer.json or spiece.model), preprocessor_config.json",
                       allow_patterns=_HUB_FILES)


def load(path_or_id: str | os.PathLike, dtype: Any = jnp.float32, max_batch: int = 256) -> FrozenCLIP:
    """Loads a frozen CLIP or SigLIP from a Hugging Face format directory or hub id.

    Args:
      path_or_id: directory with config.json (`CLIPModel` or `SiglipModel`),
        model.safetensors (or a sharded index, or pytorch_model.bin, which
        needs torch), the tokenizer (CLIP: vocab.json + merges.txt, or
        tokenizer.json; SigLIP: tokenizer.json or spiece.model) and
        preprocessor_config.json; or a hub id such as
        "openai/clip-vit-base-patch16" or "google/siglip-base-patch16-224"
        (needs network access).
      dtype: compute dtype of the towers; parameters stay float32.
      max_batch: largest chunk per jitted encoder call.
    """
    directory = resolve(path_or_id)
    config = read_config(directory)
    state, weights_file = hf_weights.read_state_dict(directory)
    params = jax.device_put(weights.convert(state, config, source=weights_file))
    if config.family == "siglip":
        tokenizer = SiglipTokenizer.from_dir(directory, config.text.context_length, config.text.vocab_size)
        # SigLIP pools at the last position, so the id only marks where prompt text ends;
        # SiglipTextConfig's default eos id lies outside its vocabulary: the tokenizer's decides.
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, eot_token_id=tokenizer.eot_id))
    else:
        tokenizer = Tokenizer.from_dir(directory, config.text.context_length, config.text.vocab_size)
        if tokenizer.eot_id != config.text.eot_token_id:
            raise ValueError(
                f"{directory}: the tokenizer's <|endoftext|> id is {tokenizer.eot_id} but config.json's "
                f"text_config.eos_token_id resolves to {config.text.eot_token_id}"
            )
    preprocessor = os.path.join(directory, PREPROCESSOR_CONFIG_NAME)
    if config.family == "siglip" and not os.path.exists(preprocessor):
        transform = ImageTransform.siglip(config.vision.image_size)
    else:
        transform = ImageTransform.from_preprocessor_config(preprocessor, config.vision.image_size)
    logging.info("loaded %s from %s (%s)", config.family, directory, weights_file)
    return FrozenCLIP(params, config, tokenizer, transform, dtype=dtype, source=directory,
                      weights_file=weights_file, max_batch=max_batch)
