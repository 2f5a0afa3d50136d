"""CLIP geometry, read from a Hugging Face `config.json`.

Missing keys take the defaults of transformers' `CLIPTextConfig` /
`CLIPVisionConfig`, so a config that transformers accepts is read the same way
here; unknown activations and inconsistent shapes are rejected with the file
and key named.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")

# The OpenAI vocabulary ends with <|startoftext|>, <|endoftext|>.
_LEGACY_EOS_ID = 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Geometry of the causal text transformer.

    Attributes:
      vocab_size: rows of the token-embedding table.
      hidden_size: width of the residual stream.
      intermediate_size: width of the MLP.
      num_layers: number of transformer blocks.
      num_heads: attention heads per block.
      context_length: positions in the position-embedding table (77 for CLIP).
      hidden_act: MLP activation, one of `ACTIVATIONS`.
      layer_norm_eps: LayerNorm epsilon.
      eot_token_id: id of `<|endoftext|>`; text is pooled at its first position.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_layers: int = 12
    num_heads: int = 8
    context_length: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eot_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Geometry of the ViT image tower.

    Attributes:
      hidden_size: width of the residual stream.
      intermediate_size: width of the MLP.
      num_layers: number of transformer blocks.
      num_heads: attention heads per block.
      image_size: input resolution R (images are R x R).
      patch_size: side of the square patches.
      num_channels: input channels (3).
      hidden_act: MLP activation, one of `ACTIVATIONS`.
      layer_norm_eps: LayerNorm epsilon.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers and the joint space.

    Attributes:
      text: text tower geometry.
      vision: image tower geometry.
      projection_dim: D, the joint embedding width.
      logit_scale_init: initial log logit scale (only used by fresh inits).
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    projection_dim: int = 512
    logit_scale_init: float = 2.6592

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content transformers' `CLIPModel` reads."""
        t, v = self.text, self.vision
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "max_position_embeddings": t.context_length,
                "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps,
                "bos_token_id": t.eot_token_id - 1,
                "eos_token_id": t.eot_token_id,
                "pad_token_id": 0,
                "projection_dim": self.projection_dim,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_layers,
                "num_attention_heads": v.num_heads,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": v.num_channels,
                "hidden_act": v.hidden_act,
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": self.projection_dim,
            },
        }


def _field(section: dict[str, Any], key: str, default: Any, where: str) -> Any:
    value = section.get(key, default)
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def _check_act(act: str, where: str) -> str:
    if act not in ACTIVATIONS:
        raise ValueError(f"{where}: 'hidden_act' is {act!r}; supported: {', '.join(ACTIVATIONS)}")
    return act


def from_hf_dict(raw: dict[str, Any], source: str = "config.json") -> CLIPConfig:
    """Parses the dict of a Hugging Face CLIP `config.json`; `source` names it in errors."""
    if raw.get("model_type", "clip") != "clip":
        raise ValueError(f"{source}: model_type is {raw.get('model_type')!r}, expected 'clip'")
    for key in ("text_config", "vision_config"):
        if not isinstance(raw.get(key, {}), dict):
            raise ValueError(f"{source}: '{key}' must be an object")
    t = raw.get("text_config") or {}
    v = raw.get("vision_config") or {}
    td, vd = TextConfig(), VisionConfig()
    where_t, where_v = f"{source} [text_config]", f"{source} [vision_config]"
    vocab_size = _field(t, "vocab_size", td.vocab_size, where_t)
    eos = t.get("eos_token_id", td.eot_token_id)
    # Configs written before transformers fixed CLIP's EOS id say 2; transformers
    # then pools at argmax(ids), i.e. the last vocabulary entry, <|endoftext|>.
    eot = vocab_size - 1 if eos == _LEGACY_EOS_ID else eos
    if not isinstance(eot, int) or not 0 <= eot < vocab_size:
        raise ValueError(f"{where_t}: 'eos_token_id' {eos!r} is outside the vocabulary of {vocab_size}")
    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=_field(t, "hidden_size", td.hidden_size, where_t),
        intermediate_size=_field(t, "intermediate_size", td.intermediate_size, where_t),
        num_layers=_field(t, "num_hidden_layers", td.num_layers, where_t),
        num_heads=_field(t, "num_attention_heads", td.num_heads, where_t),
        context_length=_field(t, "max_position_embeddings", td.context_length, where_t),
        hidden_act=_check_act(t.get("hidden_act", td.hidden_act), where_t),
        layer_norm_eps=float(t.get("layer_norm_eps", td.layer_norm_eps)),
        eot_token_id=eot,
    )
    vision = VisionConfig(
        hidden_size=_field(v, "hidden_size", vd.hidden_size, where_v),
        intermediate_size=_field(v, "intermediate_size", vd.intermediate_size, where_v),
        num_layers=_field(v, "num_hidden_layers", vd.num_layers, where_v),
        num_heads=_field(v, "num_attention_heads", vd.num_heads, where_v),
        image_size=_field(v, "image_size", vd.image_size, where_v),
        patch_size=_field(v, "patch_size", vd.patch_size, where_v),
        num_channels=_field(v, "num_channels", vd.num_channels, where_v),
        hidden_act=_check_act(v.get("hidden_act", vd.hidden_act), where_v),
        layer_norm_eps=float(v.get("layer_norm_eps", vd.layer_norm_eps)),
    )
    for name, tower in (("text_config", text), ("vision_config", vision)):
        if tower.hidden_size % tower.num_heads:
            raise ValueError(
                f"{source} [{name}]: hidden_size {tower.hidden_size} is not divisible by "
                f"num_attention_heads {tower.num_heads}"
            )
    if vision.image_size % vision.patch_size:
        raise ValueError(
            f"{where_v}: image_size {vision.image_size} is not a multiple of patch_size {vision.patch_size}"
        )
    return CLIPConfig(
        text=text,
        vision=vision,
        projection_dim=_field(raw, "projection_dim", 512, source),
        logit_scale_init=float(raw.get("logit_scale_init_value", 2.6592)),
    )


def read_config(directory: str | os.PathLike) -> CLIPConfig:
    """Reads `directory/config.json`, naming the file in every error."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in the CLIP checkpoint directory {directory}")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return from_hf_dict(raw, source=path)
