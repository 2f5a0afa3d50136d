"""CLIP and SigLIP geometry, read from a Hugging Face `config.json`.

Two families share one config: `model_type` "clip" (OpenAI and OpenCLIP/LAION
checkpoints in transformers' `CLIPModel` format) and "siglip" (transformers'
`SiglipModel`: SigLIP and the fixed-resolution SigLIP 2). Missing keys take the
defaults of transformers' `CLIPTextConfig` / `CLIPVisionConfig` (or the SigLIP
ones), so a config that transformers accepts is read the same way here;
unknown activations and inconsistent shapes are rejected with the file and key
named.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
FAMILIES = ("clip", "siglip")

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
      eot_token_id: id of the end-of-text token (`<|endoftext|>`, SigLIP's `</s>`).
      causal: causal attention, pooled at the first `eot_token_id` (CLIP), so
        positions after it never matter and prompts may be trimmed. False:
        bidirectional attention pooled at the last position (SigLIP), so every
        row runs at the full `context_length`, padding included.
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
    causal: bool = True


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
      map_head: pool with SigLIP's multi-head attention pooling (a learned probe
        attends over the post-LayerNorm patch tokens) instead of CLIP's class
        token; there is then no class token and no pre-LayerNorm.
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
    map_head: bool = False

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers and the joint space.

    Attributes:
      text: text tower geometry.
      vision: image tower geometry.
      projection_dim: D, the joint embedding width (SigLIP: the image tower's
        width, which its text head projects to).
      logit_scale_init: initial log logit scale (only used by fresh inits).
      family: "clip" (softmax-trained, scores are `exp(scale) * cos`) or
        "siglip" (sigmoid-trained: probabilities are
        `sigmoid(exp(scale) * cos + logit_bias)`, per class).
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    projection_dim: int = 512
    logit_scale_init: float = 2.6592
    family: str = "clip"

    @property
    def sigmoid(self) -> bool:
        """True for SigLIP: its scores are per-class sigmoid probabilities, with a learned bias."""
        return self.family == "siglip"

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content transformers' `CLIPModel` (or `SiglipModel`) reads."""
        t, v = self.text, self.vision
        if self.family == "siglip":
            return _siglip_hf_dict(self)
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
    """Parses the dict of a Hugging Face CLIP or SigLIP `config.json`; `source` names it in errors."""
    model_type = raw.get("model_type", "clip")
    if model_type == "siglip":
        return _siglip_from_hf_dict(raw, source)
    if model_type == "siglip2":
        raise ValueError(
            f"{source}: model_type 'siglip2' is the NaFlex SigLIP 2 (variable resolution), which is not "
            "supported; the fixed-resolution SigLIP 2 checkpoints (e.g. google/siglip2-base-patch16-224, "
            "model_type 'siglip') are"
        )
    if model_type != "clip":
        raise ValueError(f"{source}: model_type is {model_type!r}, expected one of 'clip', 'siglip'")
    t, v = _sections(raw, source)
    td = TextConfig()
    where_t = f"{source} [text_config]"
    vocab_size = _field(t, "vocab_size", td.vocab_size, where_t)
    eos = t.get("eos_token_id", td.eot_token_id)
    # Configs written before transformers fixed CLIP's EOS id say 2; transformers
    # then pools at argmax(ids), i.e. the last vocabulary entry, <|endoftext|>.
    eot = vocab_size - 1 if eos == _LEGACY_EOS_ID else eos
    if not isinstance(eot, int) or not 0 <= eot < vocab_size:
        raise ValueError(f"{where_t}: 'eos_token_id' {eos!r} is outside the vocabulary of {vocab_size}")
    text = _text_tower(t, td, where_t, eot_token_id=eot, causal=True)
    vision = _vision_tower(v, VisionConfig(), f"{source} [vision_config]", map_head=False)
    return CLIPConfig(
        text=text,
        vision=vision,
        projection_dim=_field(raw, "projection_dim", 512, source),
        logit_scale_init=float(raw.get("logit_scale_init_value", 2.6592)),
    )


# transformers' SiglipTextConfig / SiglipVisionConfig defaults (google/siglip-base-patch16-224).
_SIGLIP_TEXT = TextConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                          context_length=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, eot_token_id=1,
                          causal=False)
_SIGLIP_VISION = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224,
                              patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, map_head=True)


def _siglip_from_hf_dict(raw: dict[str, Any], source: str) -> CLIPConfig:
    """A `SiglipModel` config.json: bidirectional text pooled at the last position, MAP-head image pooling."""
    t, v = _sections(raw, source)
    where_t, where_v = f"{source} [text_config]", f"{source} [vision_config]"
    if not v.get("vision_use_head", True):
        raise ValueError(f"{where_v}: 'vision_use_head' is false; SigLIP's image features come from its MAP head")
    # SiglipTextConfig's eos default (49407) lies outside its own vocabulary; the
    # tokenizer's end-of-sequence id decides (the loader checks they agree).
    eos = t.get("eos_token_id")
    vocab_size = _field(t, "vocab_size", _SIGLIP_TEXT.vocab_size, where_t)
    eot = eos if isinstance(eos, int) and 0 <= eos < vocab_size else _SIGLIP_TEXT.eot_token_id
    text = _text_tower(t, _SIGLIP_TEXT, where_t, eot_token_id=eot, causal=False)
    vision = _vision_tower(v, _SIGLIP_VISION, where_v, map_head=True)
    projection = t.get("projection_size") or text.hidden_size
    if projection != vision.hidden_size:
        raise ValueError(
            f"{where_t}: 'projection_size' {projection} differs from the image tower's hidden_size "
            f"{vision.hidden_size}; SigLIP compares the two embeddings directly"
        )
    return CLIPConfig(text=text, vision=vision, projection_dim=vision.hidden_size, logit_scale_init=0.0,
                      family="siglip")


def _siglip_hf_dict(config: CLIPConfig) -> dict[str, Any]:
    t, v = config.text, config.vision
    tower = lambda c: {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                       "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
                       "hidden_act": c.hidden_act, "layer_norm_eps": c.layer_norm_eps}
    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "text_config": {"model_type": "siglip_text_model", "vocab_size": t.vocab_size,
                        "max_position_embeddings": t.context_length, "eos_token_id": t.eot_token_id,
                        "projection_size": config.projection_dim, **tower(t)},
        "vision_config": {"model_type": "siglip_vision_model", "image_size": v.image_size,
                          "patch_size": v.patch_size, "num_channels": v.num_channels, **tower(v)},
    }


def _sections(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for key in ("text_config", "vision_config"):
        if not isinstance(raw.get(key, {}), dict):
            raise ValueError(f"{source}: '{key}' must be an object")
    return raw.get("text_config") or {}, raw.get("vision_config") or {}


def _check_heads(section: str, hidden_size: int, num_heads: int) -> None:
    if hidden_size % num_heads:
        raise ValueError(f"{section}: hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")


def _text_tower(t: dict[str, Any], d: TextConfig, where: str, **fixed: Any) -> TextConfig:
    text = TextConfig(
        vocab_size=_field(t, "vocab_size", d.vocab_size, where),
        hidden_size=_field(t, "hidden_size", d.hidden_size, where),
        intermediate_size=_field(t, "intermediate_size", d.intermediate_size, where),
        num_layers=_field(t, "num_hidden_layers", d.num_layers, where),
        num_heads=_field(t, "num_attention_heads", d.num_heads, where),
        context_length=_field(t, "max_position_embeddings", d.context_length, where),
        hidden_act=_check_act(t.get("hidden_act", d.hidden_act), where),
        layer_norm_eps=float(t.get("layer_norm_eps", d.layer_norm_eps)),
        **fixed,
    )
    _check_heads(where, text.hidden_size, text.num_heads)
    return text


def _vision_tower(v: dict[str, Any], d: VisionConfig, where: str, **fixed: Any) -> VisionConfig:
    vision = VisionConfig(
        hidden_size=_field(v, "hidden_size", d.hidden_size, where),
        intermediate_size=_field(v, "intermediate_size", d.intermediate_size, where),
        num_layers=_field(v, "num_hidden_layers", d.num_layers, where),
        num_heads=_field(v, "num_attention_heads", d.num_heads, where),
        image_size=_field(v, "image_size", d.image_size, where),
        patch_size=_field(v, "patch_size", d.patch_size, where),
        num_channels=_field(v, "num_channels", d.num_channels, where),
        hidden_act=_check_act(v.get("hidden_act", d.hidden_act), where),
        layer_norm_eps=float(v.get("layer_norm_eps", d.layer_norm_eps)),
        **fixed,
    )
    _check_heads(where, vision.hidden_size, vision.num_heads)
    # Not necessarily a multiple (SigLIP so400m: 384 px in 14 px patches): the valid
    # patch convolution drops the remainder, as transformers' does.
    if vision.image_size < vision.patch_size:
        raise ValueError(f"{where}: image_size {vision.image_size} is smaller than patch_size {vision.patch_size}")
    return vision


def read_config(directory: str | os.PathLike) -> CLIPConfig:
    """Reads `directory/config.json`, naming the file in every error."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in the CLIP/SigLIP checkpoint directory {directory}")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return from_hf_dict(raw, source=path)
