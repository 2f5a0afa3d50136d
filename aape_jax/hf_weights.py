"""Reading Hugging Face checkpoint weights into numpy, and the strict-match report both loaders raise.

Weights come from `model.safetensors`, a sharded `model.safetensors.index.json`
or `pytorch_model.bin` (which needs torch). Safetensors files are parsed here
and memory-mapped: `safetensors.numpy` has no bfloat16, the dtype most
language-model checkpoints are published in (`ml_dtypes.bfloat16` stands in).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence

import ml_dtypes
import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """name -> read-only array memory-mapped from a safetensors file.

    Raises:
      ValueError: naming the file, when its header or sizes are inconsistent (truncated or corrupt).
    """
    def corrupt(why: str) -> ValueError:
        return ValueError(f"cannot read weights file {path} (truncated or corrupt?): {why}")

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise corrupt(f"the header claims {header_len} bytes, the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise corrupt(f"the header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len) if size > 8 + header_len else None
    out = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = np.dtype(_DTYPES[entry["dtype"]]), tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"tensor {name!r} has a malformed entry {entry!r} ({type(e).__name__}: {e})") from e
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or begin < 0 or end > size - 8 - header_len:
            raise corrupt(f"tensor {name!r} ({entry['dtype']} {list(shape)}) has data offsets {begin}..{end}, "
                          f"outside or inconsistent with the {size - 8 - header_len} data bytes")
        out[name] = (np.zeros(shape, dtype) if count == 0 else data[begin:end].view(dtype).reshape(shape))
    return out


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; reading it needs torch (`pip install torch==2.13.0`), "
            "or convert the checkpoint to model.safetensors"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read weights file {path} (truncated or corrupt?): {e}") from e
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_state_dict(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """Loads the weights of an HF checkpoint directory; returns (state dict, file it came from).

    Order: `model.safetensors`, sharded `model.safetensors.index.json`, `pytorch_model.bin`.
    """
    directory = os.fspath(directory)
    single = os.path.join(directory, SAFETENSORS)
    index = os.path.join(directory, SAFETENSORS_INDEX)
    torch_bin = os.path.join(directory, TORCH_BIN)
    if os.path.isfile(single):
        return read_safetensors(single), single
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index: {e}") from e
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            shard_path = os.path.join(directory, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"{index} lists {shard}, which is missing from {directory}")
            state.update(read_safetensors(shard_path))
        return state, index
    if os.path.isfile(torch_bin):
        return _read_torch_bin(torch_bin), torch_bin
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}"
    )


def raise_if_mismatched(source: str, model: str, mismatched: Sequence[str], unused: Sequence[str],
                        missing: Sequence[str]) -> None:
    """Raises one ValueError listing every shape mismatch, unused tensor and unfilled parameter, if any."""
    sections = (
        ("shape mismatches", list(mismatched)),
        ("checkpoint tensors the model does not use", sorted(unused)),
        ("model parameters the checkpoint does not fill", sorted(missing)),
    )
    problems = [f"{title}:\n  " + "\n  ".join(keys) for title, keys in sections if keys]
    if problems:
        raise ValueError(f"{source} does not match the {model} geometry of its config.json:\n" + "\n".join(problems))
