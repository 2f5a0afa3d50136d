"""A language model's own tokenizer, read from its checkpoint through the `tokenizers` library.

`tokenizer.json` holds the whole pipeline (normaliser, pre-tokeniser, BPE,
post-processor adding e.g. Llama's `<s>`), so ids equal transformers' fast
tokenizer on the same files. GPT-2/GPT-J exports that hold only
`vocab.json` + `merges.txt` get GPT-2's byte-level pipeline built around them.
Special tokens come from `tokenizer_config.json` / `special_tokens_map.json`,
else from the model's config ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers

from aape_jax.lm.config import LMConfig

TOKENIZER_JSON = "tokenizer.json"


def _special(directory: str, name: str) -> str | None:
    """The content of special token `name` ("eos_token", ...) in the checkpoint's tokenizer files."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f).get(name)
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{path} is not a JSON object: {e}") from e
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def _byte_level_bpe(vocab: str, merges: str) -> tokenizers.Tokenizer:
    """GPT-2's pipeline around a vocab.json/merges.txt pair."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab, merges))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    backend.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    return backend


class Tokenizer:
    """Text <-> ids with the checkpoint's special tokens, and padding to one length.

    Attributes:
      backend: the `tokenizers.Tokenizer`.
      bos_id, eos_id, pad_id: special ids (pad falls back to EOS, as transformers' generate does).
      source: the file it was read from.
    """

    def __init__(self, backend: tokenizers.Tokenizer, bos_id: int | None, eos_id: int | None, pad_id: int | None,
                 source: str):
        self.backend, self.bos_id, self.eos_id, self.source = backend, bos_id, eos_id, source
        self.pad_id = pad_id if pad_id is not None else eos_id

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, config: LMConfig) -> Tokenizer:
        """Reads the tokenizer of a checkpoint directory whose model is `config`.

        Raises:
          FileNotFoundError: neither tokenizer.json nor vocab.json + merges.txt (GPT-2/GPT-J) is there.
          ValueError: the tokenizer has more ids than the embedding table has rows.
        """
        directory = os.fspath(directory)
        path = os.path.join(directory, TOKENIZER_JSON)
        vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if os.path.isfile(path):
            try:
                backend = tokenizers.Tokenizer.from_file(path)
            except Exception as e:  # tokenizers raises a bare Exception for malformed files
                raise ValueError(f"cannot read {path}: {e}") from e
        elif config.family in ("gpt2", "gptj") and os.path.isfile(vocab) and os.path.isfile(merges):
            backend, path = _byte_level_bpe(vocab, merges), vocab
        else:
            also = " (or vocab.json + merges.txt)" if config.family in ("gpt2", "gptj") else ""
            raise FileNotFoundError(f"no tokenizer in {directory}: expected {TOKENIZER_JSON}{also}")
        size = backend.get_vocab_size(with_added_tokens=True)
        if size > config.vocab_size:
            raise ValueError(
                f"{path} has {size} token ids but the embedding table of {os.path.join(directory, 'config.json')} "
                f"has {config.vocab_size} rows (vocab_size): ids past the table would read garbage; "
                "the tokenizer and the weights are from different models"
            )

        def special(name: str, fallback: int | None) -> int | None:
            token = _special(directory, name)
            found = None if token is None else backend.token_to_id(token)
            return fallback if found is None else found

        eos_fallback = config.eos_token_ids[0] if config.eos_token_ids else None
        return cls(backend, special("bos_token", config.bos_token_id), special("eos_token", eos_fallback),
                   special("pad_token", config.pad_token_id), path)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str], padding_side: str = "left", add_special_tokens: bool = True,
               max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of `texts` padded to one length, and which positions are real.

        Args:
          texts: the strings.
          padding_side: "left" (what `generate` needs) or "right".
          add_special_tokens: run the checkpoint's post-processor (e.g. Llama's leading `<s>`).
          max_length: keep at most this many tokens per text (the last ones when padding left,
            so a prompt keeps its end; the first ones otherwise).

        Returns:
          (ids [N, L] int32, mask [N, L] bool).
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        if max_length is not None:
            rows = [r[-max_length:] if padding_side == "left" else r[:max_length] for r in rows]
        length = max([len(r) for r in rows] + [1])
        ids = np.full((len(rows), length), self.pad_id if self.pad_id is not None else 0, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            span = slice(length - len(r), length) if padding_side == "left" else slice(0, len(r))
            ids[i, span], mask[i, span] = r, True
        return ids, mask

    def decode(self, ids: Any, stop_ids: Sequence[int] = ()) -> list[str]:
        """Texts of rows of ids [N, T], each cut at its first EOS (or any of `stop_ids`), specials dropped."""
        stops = set(stop_ids) | ({self.eos_id} - {None})
        out = []
        for row in np.asarray(ids).tolist():
            end = next((j for j, t in enumerate(row) if t in stops), len(row))
            out.append(self.backend.decode(row[:end], skip_special_tokens=True))
        return out
