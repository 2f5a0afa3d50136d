"""Hugging Face CLIP / SigLIP checkpoint <-> Flax parameter tree, in pure numpy.

Conversion is renaming (`layers.3` -> `layers_3`, `weight` -> `kernel` /
`embedding` / `scale`) plus transposes (Linear `(out, in)` -> `(in, out)`,
conv `(O, I, H, W)` -> `(H, W, I, O)` for NHWC images). It is strict: a
checkpoint tensor that fills no parameter, a parameter left unfilled or a
shape that differs is an error naming every key at fault. SigLIP's extra
tensors need no rule of their own: its MAP head's `in_proj_weight` /
`in_proj_bias` and `probe` keep their torch layout, and its `logit_scale` /
`logit_bias` of shape (1,) become scalars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from aape_jax import hf_weights
from aape_jax.clip.backbone import backbone
from aape_jax.clip.config import CLIPConfig

# Buffers that older exports carry next to the parameters; they hold no learned values.
_BUFFERS = re.compile(r"^(text|vision)_model\.embeddings\.position_ids$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_LAYER_NORMS = {"layer_norm1", "layer_norm2", "final_layer_norm", "pre_layrnorm", "post_layernorm", "layernorm"}
# Stored with shape (1,) by SiglipModel, () by CLIPModel; scalars in Flax either way.
_SCALARS = {"logit_scale", "logit_bias"}


def _to_flax(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """One checkpoint tensor -> (Flax parameter path, value in Flax layout)."""
    parts = _LAYER.sub(r".layers_\1.", key).split(".")
    *module, leaf = parts
    owner = module[-1] if module else ""
    if key in _SCALARS and value.shape == (1,):
        return (key,), value.reshape(())
    if leaf == "weight":
        if owner in ("token_embedding", "position_embedding"):
            return (*module, "embedding"), value
        if owner in _LAYER_NORMS:
            return (*module, "scale"), value
        if owner == "patch_embedding":
            return (*module, "kernel"), value.transpose(2, 3, 1, 0)  # (O,I,H,W) -> (H,W,I,O)
        return (*module, "kernel"), value.T  # Linear (out, in) -> (in, out)
    return tuple(parts), value


def _hf_key(path: tuple[str, ...]) -> str:
    """Checkpoint name of a Flax parameter path."""
    *module, leaf = path
    if leaf in ("embedding", "scale", "kernel"):
        leaf = "weight"
    return re.sub(r"\.layers_(\d+)\.", r".layers.\1.", ".".join([*module, leaf]))


def _to_hf_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """Inverse of the transposes in `_to_flax`."""
    if path[-1] != "kernel":
        return value
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T


def expected_shapes(config: CLIPConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every Flax parameter path of the backbone of `config` with its shape (no compute)."""
    r, ctx = config.vision.image_size, 1
    abstract = jax.eval_shape(
        backbone(config).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, r, r, config.vision.num_channels), jnp.float32),
        jax.ShapeDtypeStruct((1, ctx), jnp.int32),
    )["params"]
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(abstract).items()}


def convert(state: Mapping[str, np.ndarray], config: CLIPConfig, source: str = "checkpoint") -> dict:
    """HF state dict (name -> numpy) -> nested Flax `params`, strictly; float32 leaves.

    Raises:
      ValueError: naming the unused checkpoint keys, the parameters left
        unfilled (by their checkpoint names) and every shape mismatch.
    """
    expected = expected_shapes(config)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unused, mismatched = [], []
    seen: set[tuple[str, ...]] = set()  # paths with a checkpoint tensor, matching or not
    for key, value in state.items():
        if _BUFFERS.match(key):
            continue
        path, converted = _to_flax(key, np.asarray(value))
        if path not in expected:
            unused.append(key)
            continue
        seen.add(path)
        if tuple(converted.shape) != expected[path]:
            want = _to_hf_layout(path, np.empty(expected[path], dtype=np.uint8)).shape
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {tuple(want)}")
        else:
            flat[path] = np.asarray(converted, dtype=np.float32)
    missing = [_hf_key(p) for p in expected if p not in seen]
    hf_weights.raise_if_mismatched(source, "SigLIP" if config.family == "siglip" else "CLIP", mismatched, unused,
                                   missing)
    return flax.traverse_util.unflatten_dict(flat)


def to_state_dict(params: Mapping, config: CLIPConfig | None = None) -> dict[str, np.ndarray]:
    """Nested Flax `params` -> HF state dict (name -> numpy), e.g. to write a checkpoint.

    `config` (its family) decides the stored shape of the scalars: (1,) for SigLIP, () for CLIP.
    """
    siglip = config is not None and config.family == "siglip"
    out = {}
    for path, value in flax.traverse_util.flatten_dict(dict(params)).items():
        value = np.asarray(value)
        if siglip and path[0] in _SCALARS:
            value = value.reshape(1)
        out[_hf_key(path)] = np.array(_to_hf_layout(path, value), order="C")
    return out
