"""Decoder geometry, read from a Hugging Face `config.json` (GPT-2, GPT-J, Llama, Mistral, Qwen2).

Missing keys take the defaults of transformers' config class for that
`model_type`, so a config transformers accepts reads the same here. An
unsupported `model_type`, activation or RoPE type is an error naming the file
and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# model_type -> the family whose modules run it.
FAMILIES = {"gpt2": "gpt2", "gptj": "gptj", "llama": "llama", "mistral": "llama", "qwen2": "llama"}
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "silu", "relu")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding.

    Attributes:
      dim: rotated dimensions of each head (GPT-J: `rotary_dim`; Llama: the head).
      theta: base wavelength.
      interleaved: GPT-J rotates pairs (0,1), (2,3), ...; Llama rotates halves (i, i + dim/2).
      kind: one of `ROPE_TYPES`.
      factor: `linear` and `llama3` frequency divisor.
      low_freq_factor, high_freq_factor, original_max_positions: `llama3` smoothing.
    """

    dim: int
    theta: float = 10000.0
    interleaved: bool = False
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Geometry of a causal decoder.

    Attributes:
      model_type: config.json's `model_type` (one of `FAMILIES`).
      vocab_size: rows of the token-embedding table (may exceed the tokenizer's ids).
      hidden_size: W, the width of the residual stream.
      num_layers: decoder blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads (fewer than `num_heads`: grouped-query attention).
      head_dim: width of one head.
      intermediate_size: MLP width.
      max_positions: positions the model was built for (GPT-2's table size).
      norm_eps: LayerNorm / RMSNorm epsilon.
      hidden_act: MLP activation, one of `ACTIVATIONS`.
      rope: rotary embedding (None for GPT-2's learned positions).
      qkv_bias: biases on the query/key/value projections.
      out_bias: bias on the attention output projection.
      mlp_bias: biases in the MLP.
      tie_word_embeddings: the output head is the token-embedding table.
      lm_head_bias: the output head has a bias (GPT-J).
      sliding_windows: per layer, attention span in positions, or None for full attention.
      bos_token_id, eos_token_ids, pad_token_id: from config.json (or generation_config.json).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    hidden_act: str
    rope: RopeConfig | None
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    lm_head_bias: bool = False
    sliding_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @property
    def family(self) -> str:
        return FAMILIES[self.model_type]


def _positive(raw: dict[str, Any], key: str, default: Any, where: str) -> int:
    value = raw.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def _token_ids(value: Any, key: str, where: str) -> tuple[int, ...]:
    ids = () if value is None else tuple(value) if isinstance(value, list) else (value,)
    if not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ValueError(f"{where}: '{key}' must be a token id or a list of them, got {value!r}")
    return ids


def _activation(raw: dict[str, Any], key: str, default: str, where: str) -> str:
    act = raw.get(key, default)
    if act not in ACTIVATIONS:
        raise ValueError(f"{where}: '{key}' is {act!r}; supported: {', '.join(ACTIVATIONS)}")
    return act


def _rope(raw: dict[str, Any], dim: int, where: str) -> RopeConfig:
    """Llama-family RoPE from transformers 5's `rope_parameters` or the older `rope_theta`/`rope_scaling`."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"{where}: rope type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor") or 1.0)) != 1.0:
        raise ValueError(f"{where}: 'partial_rotary_factor' other than 1.0 is not supported in this family")
    return RopeConfig(
        dim=dim,
        theta=float(params.get("rope_theta", raw.get("rope_theta", 10000.0))),
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_positions=int(params.get("original_max_position_embeddings",
                                              raw.get("max_position_embeddings", 8192))),
    )


def _sliding_windows(raw: dict[str, Any], model_type: str, layers: int, where: str) -> tuple[int | None, ...]:
    if model_type == "mistral":
        return (raw.get("sliding_window", 4096),) * layers
    if model_type != "qwen2":
        return (None,) * layers
    window = raw.get("sliding_window", 4096) if raw.get("use_sliding_window", False) else None
    types = raw.get("layer_types") or [
        "sliding_attention" if window is not None and i >= raw.get("max_window_layers", 28) else "full_attention"
        for i in range(layers)
    ]
    if len(types) != layers or not set(types) <= {"full_attention", "sliding_attention"}:
        raise ValueError(f"{where}: 'layer_types' must list full_attention/sliding_attention for {layers} layers")
    return tuple(window if t == "sliding_attention" else None for t in types)


def from_hf_dict(raw: dict[str, Any], source: str = "config.json") -> LMConfig:
    """Parses a Hugging Face decoder `config.json` dict; `source` names it in errors."""
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    common = dict(
        model_type=model_type,
        vocab_size=_positive(raw, "vocab_size", 50257 if model_type in ("gpt2", "gptj") else 32000, source),
        bos_token_id=(_token_ids(raw.get("bos_token_id"), "bos_token_id", source) or (None,))[0],
        eos_token_ids=_token_ids(raw.get("eos_token_id"), "eos_token_id", source),
        pad_token_id=(_token_ids(raw.get("pad_token_id"), "pad_token_id", source) or (None,))[0],
    )
    if model_type in ("gpt2", "gptj"):
        width = _positive(raw, "n_embd", 768 if model_type == "gpt2" else 4096, source)
        heads = _positive(raw, "n_head", 12 if model_type == "gpt2" else 16, source)
        layers = _positive(raw, "n_layer", 12 if model_type == "gpt2" else 28, source)
        if width % heads:
            raise ValueError(f"{source}: n_embd {width} is not divisible by n_head {heads}")
        head_dim = width // heads
        rope = None
        if model_type == "gptj":
            rotary_dim = raw.get("rotary_dim", 64) or head_dim
            if not isinstance(rotary_dim, int) or rotary_dim <= 0 or rotary_dim > head_dim or rotary_dim % 2:
                raise ValueError(f"{source}: 'rotary_dim' must be an even integer <= the head width {head_dim}, "
                                 f"got {rotary_dim!r}")
            rope = RopeConfig(dim=rotary_dim, interleaved=True)
        config = LMConfig(
            **common,
            hidden_size=width,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=head_dim,
            intermediate_size=_positive(raw, "n_inner", 4 * width, source),
            max_positions=_positive(raw, "n_positions", 1024 if model_type == "gpt2" else 2048, source),
            norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
            hidden_act=_activation(raw, "activation_function", "gelu_new", source),
            rope=rope,
            qkv_bias=model_type == "gpt2",
            out_bias=model_type == "gpt2",
            mlp_bias=True,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type == "gpt2")),
            lm_head_bias=model_type == "gptj",
            sliding_windows=(None,) * layers,
        )
    else:
        width = _positive(raw, "hidden_size", 4096, source)
        heads = _positive(raw, "num_attention_heads", 32, source)
        kv_heads = _positive(raw, "num_key_value_heads", heads, source)
        layers = _positive(raw, "num_hidden_layers", 32, source)
        if heads % kv_heads:
            raise ValueError(f"{source}: num_attention_heads {heads} is not a multiple of "
                             f"num_key_value_heads {kv_heads}")
        if raw.get("head_dim") is None and width % heads:
            raise ValueError(f"{source}: hidden_size {width} is not divisible by num_attention_heads {heads}")
        head_dim = _positive(raw, "head_dim", width // heads, source)
        attention_bias = bool(raw.get("attention_bias", False))
        config = LMConfig(
            **common,
            hidden_size=width,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=_positive(raw, "intermediate_size", 11008, source),
            max_positions=_positive(raw, "max_position_embeddings", 2048, source),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            hidden_act=_activation(raw, "hidden_act", "silu", source),
            rope=_rope(raw, head_dim, source),
            qkv_bias=attention_bias or model_type == "qwen2",
            out_bias=attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            sliding_windows=_sliding_windows(raw, model_type, layers, source),
        )
    # generate() stops at EOS and pads with PAD; an id past the table would index garbage.
    for name, value in (("pad_token_id", config.pad_token_id), *(("eos_token_id", i) for i in config.eos_token_ids)):
        if value is not None and value >= config.vocab_size:
            raise ValueError(f"{source}: '{name}' {value} is outside the vocabulary of {config.vocab_size}")
    return config


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return raw


def read_config(directory: str | os.PathLike) -> LMConfig:
    """Reads `directory/config.json`; `generation_config.json`'s special ids win where it has them,
    as they do in transformers' `generate`."""
    directory = os.fspath(directory)
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in the language model directory {directory}")
    raw = _read_json(path)
    generation = os.path.join(directory, "generation_config.json")
    if os.path.isfile(generation):
        overrides = {k: v for k, v in _read_json(generation).items()
                     if k in ("bos_token_id", "eos_token_id", "pad_token_id") and v is not None}
        raw = {**raw, **overrides}
        path = f"{path} (with {generation})" if overrides else path
    return from_hf_dict(raw, source=path)


def to_hf_dict(config: LMConfig) -> dict[str, Any]:
    """The `config.json` transformers reads for `config` (used by `lm.tiny`)."""
    ids = {"bos_token_id": config.bos_token_id,
           "eos_token_id": config.eos_token_ids[0] if len(config.eos_token_ids) == 1 else list(config.eos_token_ids),
           "pad_token_id": config.pad_token_id}
    if config.family in ("gpt2", "gptj"):
        out = {"n_embd": config.hidden_size, "n_layer": config.num_layers, "n_head": config.num_heads,
               "n_inner": config.intermediate_size, "n_positions": config.max_positions,
               "layer_norm_epsilon": config.norm_eps, "activation_function": config.hidden_act,
               "tie_word_embeddings": config.tie_word_embeddings}
        if config.family == "gptj":
            out["rotary_dim"] = config.rope.dim
        architecture = "GPT2LMHeadModel" if config.family == "gpt2" else "GPTJForCausalLM"
    else:
        rope = config.rope
        out = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
               "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
               "head_dim": config.head_dim, "intermediate_size": config.intermediate_size,
               "max_position_embeddings": config.max_positions, "rms_norm_eps": config.norm_eps,
               "hidden_act": config.hidden_act, "tie_word_embeddings": config.tie_word_embeddings,
               "rope_theta": rope.theta}
        if config.model_type == "llama":
            out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
        if config.model_type == "mistral":
            out["sliding_window"] = config.sliding_windows[0] if config.sliding_windows else None
        architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                        "qwen2": "Qwen2ForCausalLM"}[config.model_type]
    return {"architectures": [architecture], "model_type": config.model_type, "vocab_size": config.vocab_size,
            **out, **ids}
