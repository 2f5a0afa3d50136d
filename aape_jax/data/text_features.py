"""Prompt, template and class-text embeddings from the frozen text encoder, cached in the feature store."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from aape_jax import distributed
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.data.feature_store import FeatureStore, file_digest
from aape_jax.models.heads import ClassText, template_ids
from aape_jax.numerics import l2_normalize
from aape_jax.prompts.templates import fill_classes

_CHUNK = 1024  # texts per progress-bar tick


def clip_fingerprint(model: FrozenCLIP) -> dict[str, str]:
    """What makes a CLIP's outputs what they are: weights, tokenizer files, compute dtype.

    The tokenizer's files are keyed by their stem ("vocab", "merges" for CLIP's classic
    layout, as before tokenizer.json was read, so existing entries stay valid).
    """
    files = {pathlib.Path(f).stem: file_digest(f) for f in model.tokenizer.files}
    return {"weights": file_digest(model.weights_file), **files, "dtype": np.dtype(model.dtype).name}


def encode_texts(model: FrozenCLIP, texts: Sequence[str], desc: str = "text features") -> np.ndarray:
    """L2-normalised text embeddings np.float32 [N, D], batched through the jitted encoder."""
    chunks = []
    for start in tqdm(range(0, len(texts), _CHUNK), desc=desc, unit="chunk", disable=len(texts) <= _CHUNK or not distributed.is_main_process()):
        z = model.encode_text(model.tokenize(list(texts[start : start + _CHUNK])))
        chunks.append(l2_normalize(z))
    out = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(out).all():
        bad = texts[int(np.argwhere(~np.isfinite(out).all(-1))[0, 0])]
        raise ValueError(f"the text encoder gave a non-finite embedding for {bad!r}")
    return out


def prompt_table(
    model: FrozenCLIP, store: FeatureStore, prompt_sets: Sequence[Sequence[str]], names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Encodes prompt sets once (cached) into a padded table.

    Args:
      model: the frozen CLIP.
      store: feature store; the entry is keyed by the CLIP fingerprint and the prompts' text.
      prompt_sets: one list of prompts per row (a class's descriptions, an image's captions).
      names: a name per row, for errors.

    Returns:
      Normalised embeddings np.float32 [R, M, D] (zeros where padded) and the mask [R, M].
    """
    for name, prompts in zip(names, prompt_sets, strict=True):
        if not prompts:
            raise ValueError(f"{name!r} has an empty prompt list")
    sets = [list(p) for p in prompt_sets]
    key = {"clip": clip_fingerprint(model), "prompt_sets": sets}

    def compute() -> dict[str, np.ndarray]:
        unique = sorted({t for s in sets for t in s})
        z = encode_texts(model, unique, desc="prompt embeddings")
        row_of = {t: i for i, t in enumerate(unique)}
        width = max(len(s) for s in sets)
        table = np.zeros((len(sets), width, z.shape[-1]), np.float32)
        mask = np.zeros((len(sets), width), bool)
        for r, s in enumerate(sets):
            table[r, : len(s)] = z[[row_of[t] for t in s]]
            mask[r, : len(s)] = True
        return {"embeddings": table, "mask": mask}

    out = store.get_or_compute("prompts", key, compute)
    return out["embeddings"], out["mask"]


def template_features(model: FrozenCLIP, store: FeatureStore, template: str, classnames: Sequence[str]) -> np.ndarray:
    """Normalised embeddings of `template` filled with each class name: np.float32 [C, D] (cached)."""
    texts = fill_classes(template, classnames)
    key = {"clip": clip_fingerprint(model), "texts": texts}
    return store.get_or_compute("templates", key, lambda: {"z": encode_texts(model, texts, "templates")})["z"]


def class_text(model: FrozenCLIP, template: str, classnames: Sequence[str], num_tokens: int,
               store: FeatureStore | None = None, token_prompt: str | None = None) -> ClassText:
    """The classes' `ClassText`: normalised template features (cached in `store` when given) and the
    token ids of `token_prompt` (default: `template`) with room for `num_tokens` inserted tokens.

    AAPE inserts into the template itself, CoOp's family into "{}.".
    """
    features = template_features(model, store, template, classnames) if store else encode_texts(
        model, fill_classes(template, classnames))
    ids, eot = template_ids(model.tokenizer, fill_classes(token_prompt or template, classnames), num_tokens,
                            full_context=not model.config.text.causal)
    return ClassText(features=jnp.asarray(features), ids=jnp.asarray(ids), eot=jnp.asarray(eot),
                     text_start=model.tokenizer.text_start)
