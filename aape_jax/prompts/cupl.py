"""LLM class descriptions in CuPL's JSON format: {"class name": ["sentence", ...], ...}.

CuPL (Pratt et al., 2023) published GPT-3 descriptions for ImageNet and the few-shot
benchmarks in this format; keys are CuPL's own class spellings, which
`aape_jax.prompts.matching` maps onto a dataset's class names.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging

from aape_jax import storage
from aape_jax.errors import PromptFileError


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load keeps the last of two equal keys silently; losing a class's sentences
    # that way would go unnoticed, so a repeated key is an error instead.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears more than once")
        out[key] = value
    return out


def read_class_descriptions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a CuPL-format file (local or ``gs://``) into {class key: sentences}, keys in file order.

    Sentences are stripped; empty ones are dropped; exact repeats within a class
    (common in the published files) are kept once, at their first position. A key
    whose list holds no sentence (`"gerenuk": []`) is left out, with a warning, so
    matching treats that class like one the file does not have (the template
    fallback, when enabled, covers it).

    Raises:
      PromptFileError (a ValueError): naming `path` (and the key, where one is at
        fault) when the file cannot be read, is not valid JSON, is not a non-empty
        object, repeats a key, or maps a key to something other than a list of strings.
    """
    try:
        with storage.open_text(path) as f:
            try:
                data = json.load(f, object_pairs_hook=_reject_duplicate_keys)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}: invalid JSON: {e}") from e
            except ValueError as e:  # a repeated key, from the hook; or undecodable bytes
                raise PromptFileError(f"{path}: {e}") from e
    except OSError as e:
        raise PromptFileError(f"cannot read prompt file {path}: {e.strerror or e}",
                              hint="check config.prompts.path") from e
    if not isinstance(data, dict):
        raise PromptFileError(
            f"{path}: expected a JSON object {{class name: [sentence, ...]}}, got {type(data).__name__}")
    if not data:
        raise PromptFileError(f"{path}: holds no classes")
    out: dict[str, list[str]] = {}
    empty: list[str] = []
    for key, sentences in data.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise PromptFileError(f"{path}: key {key!r}: expected a list of strings, got {sentences!r:.80}")
        # dict.fromkeys de-duplicates while keeping first-seen order.
        cleaned = list(dict.fromkeys(s.strip() for s in sentences if s.strip()))
        if not cleaned:
            empty.append(key)
            continue
        out[key] = cleaned
    if empty:
        logging.warning("%s: %d key(s) have no sentences and count as missing classes: %s", path, len(empty),
                        ", ".join(map(repr, empty)))
    return out
