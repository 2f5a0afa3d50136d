"""`load()`: a Hugging Face format CLIP checkpoint (local directory or hub id) -> `FrozenCLIP`."""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from aape_jax.clip import weights
from aape_jax.clip.config import read_config
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.preprocess import ImageTransform
from aape_jax.clip.tokenizer import Tokenizer

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt",
              "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]


def resolve(path_or_id: str | os.PathLike) -> str:
    """A local checkpoint directory for `path_or_id`, downloading a hub id when online."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    if not _HUB_ID.match(path) or path.startswith("."):
        raise FileNotFoundError(f"CLIP checkpoint directory {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=_HUB_FILES)
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(
            f"{path} is not a local directory, and downloading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}). Offline, pass the path of a local Hugging Face format "
            "directory instead (config.json, model.safetensors, vocab.json, merges.txt, "
            "preprocessor_config.json), e.g. one made with `huggingface-cli download "
            f"{path} --local-dir DIR` on a machine that is online."
        ) from e


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
    state, weights_file = weights.read_state_dict(directory)
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
