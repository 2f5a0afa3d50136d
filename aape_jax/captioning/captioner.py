"""`AAPECaptioner`: a trained captioning run as an API: captions and VQA answers from images, batched.

    from aape_jax.captioning import AAPECaptioner
    cap = AAPECaptioner.load("runs/aape_captioning")
    cap.caption(images)                                   # list[str]
    cap.answer(images, ["what colour is the bus?"])       # list[str] (zero-shot: "[image] Q: ... A:")

Every row the decoder sees is a sequence of segments: soft tokens of one image
(the maps' output: image tokens, then the AAPE's) and token ids of text. A
caption row is [image | prompt]; an n-shot VQA row is n examples
[image_i | "Q: q_i A: a_i"] followed by [image | "Q: q A:"]. Rows are
left-padded to a multiple of `LENGTH_BUCKET` and the batch to `batch_size`,
so a handful of shapes compile; the soft tokens, the assembly and the decode
loop are jitted with every parameter passed as an argument.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aape_jax import clip as clip_lib
from aape_jax import lm as lm_lib
from aape_jax import storage, toyworld
from aape_jax.captioning.model import CaptionMaps, init_maps, maps_config
from aape_jax.captioning.train_step import soft_tokens
from aape_jax.checkpoint import checkpoints_dir, restore_trainable
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.preprocess import ImageLike
from aape_jax.errors import ConfigError
from aape_jax.frozen_stage import random_clip_dir, random_lm_dir
from aape_jax.lm.model import CausalLM

LENGTH_BUCKET = 8
VQA_PROMPT = "Q: {question} A:"
VQA_EXAMPLE = "Q: {question} A: {answer}\n"

Segment = int | Sequence[int]  # a row of the soft-token bank, or token ids


def first_answer_line(text: str) -> str:
    """A generated answer up to its first line break or next question, stripped."""
    return text.split("\n", 1)[0].split("Q:", 1)[0].strip()


@dataclasses.dataclass
class AAPECaptioner:
    """Frozen CLIP and language model, and the trained maps (LiMBeR's, plus AAPE's for method "aape").

    Attributes:
      clip: the frozen CLIP.
      lm: the frozen decoder.
      model: the maps module.
      params: the trained tree.
      prompt: the caption prompt after the soft tokens (LiMBeR: "A picture of").
      decoding: generate() settings: method, num_beams, length_penalty, max_new_tokens.
      batch_size: rows per generation call.
    """

    clip: FrozenCLIP
    lm: lm_lib.LanguageModel
    model: CaptionMaps
    params: Any
    prompt: str = "A picture of"
    decoding: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"method": "greedy",
                                                                              "max_new_tokens": 20})
    batch_size: int = 32

    def __post_init__(self) -> None:
        self._soft = jax.jit(functools.partial(soft_tokens, self.model))
        lm_module = CausalLM(self.lm.config, dtype=self.lm.dtype)

        def assemble(lm_params: Any, bank: jax.Array, ids: jax.Array, soft_at: jax.Array) -> jax.Array:
            # ids [B, L] (< 0: not a token), soft_at [B, L] (row of the flat bank, < 0: a token)
            tokens = lm_module.apply({"params": lm_params}, jnp.maximum(ids, 0), method=CausalLM.embed)
            flat = bank.reshape(-1, bank.shape[-1]).astype(tokens.dtype)  # [N * S, W]
            return jnp.where((soft_at >= 0)[..., None], flat[jnp.maximum(soft_at, 0)], tokens)

        self._assemble = jax.jit(assemble)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, workdir: str | os.PathLike, clip: str | None = None, lm: str | None = None,
             batch_size: int = 32) -> AAPECaptioner:
        """The workdir's (local or ``gs://``) latest checkpoint with the CLIP and decoder it was trained on
        (or `clip` / `lm` of the same geometry)."""
        workdir = os.fspath(workdir)
        path = storage.path(os.path.join(workdir, "config.json"))
        if not path.is_file():
            raise ConfigError(f"{path} not found: is {workdir} a training workdir?",
                              hint="pass the --workdir of a finished captioning run")
        config = json.loads(storage.read_text(path))["config"]
        if config.get("task") not in ("captioning", "vqa"):
            raise ConfigError(f"{workdir} is a {config.get('task', 'classification')!r} run (config.task in its "
                              "config.json); AAPECaptioner loads captioning and VQA runs")
        checkpoints_dir(workdir)  # a clear error before CLIP and the decoder are loaded
        clip_path = clip or config["clip"] or random_clip_dir(workdir, config.get("random_clip_geometry", "tiny"))
        if clip_path == toyworld.CLIP_NAME:
            clip_path = toyworld.pretrained_clip(config.get("toyworld_tokenizer_dir") or None)
        frozen = clip_lib.load(clip_path, dtype=jnp.dtype(config["clip_dtype"]))
        decoder = lm_lib.load(lm or config["lm"] or random_lm_dir(workdir, config["random_lm_family"]),
                              dtype=jnp.dtype(config["lm_dtype"]), param_dtype=jnp.dtype(config["lm_param_dtype"]))
        model = CaptionMaps(maps_config(config["model"], config["method"], frozen.config, decoder.config))
        abstract = jax.eval_shape(lambda key: init_maps(model, key), jax.random.key(0))
        params, _ = restore_trainable(workdir, abstract)
        return cls(frozen, decoder, model, params, config["prompt"], dict(config["decoding"]), batch_size)

    # ------------------------------------------------------------------ features

    def image_features(self, images: Sequence[ImageLike]) -> np.ndarray:
        """CLIP feature rows of images (paths, PIL images, uint8 arrays): [N, D], or [N, D + P * W] for grid maps."""
        pixels = self.clip.preprocess(list(images))
        if self.model.config.image_input == "grid":
            return self.clip.encode_image_grid(pixels)
        return self.clip.encode_image(pixels)

    # ------------------------------------------------------------------ decoding

    def _ids(self, text: str) -> list[int]:
        return self.lm.tokenizer.backend.encode(text, add_special_tokens=False).ids

    def _generate(self, features: np.ndarray, rows: list[list[Segment]]) -> list[str]:
        """Decodes `rows` (segments over the soft tokens of `features`' rows) in padded batches."""
        out: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            used = sorted({s for row in batch for s in row if isinstance(s, int)})
            bank_rows = np.zeros((_bucket(len(used), self.batch_size), features.shape[-1]), np.float32)
            bank_rows[:len(used)] = features[used]
            bank = self._soft(self.params, jnp.asarray(bank_rows))  # [N, S, W]
            where = {row: i for i, row in enumerate(used)}
            ids, soft_at, mask = self._layout(batch, where, bank.shape[1])
            embeds = self._assemble(self.lm.params, bank, jnp.asarray(ids), jnp.asarray(soft_at))
            tokens = self.lm.generate_from_embeds(
                embeds, mask, max_new_tokens=int(self.decoding["max_new_tokens"]),
                method=self.decoding["method"], num_beams=int(self.decoding.get("num_beams", 1)),
                length_penalty=float(self.decoding.get("length_penalty", 1.0)))
            out.extend(self.lm.decode(tokens[:len(batch)]))
        return [t.strip() for t in out]

    def _layout(self, batch: list[list[Segment]], where: dict[int, int], soft_len: int):
        """Left-padded ids [B, L], bank positions [B, L] and mask [B, L] of the rows (B padded to batch_size)."""
        flat_rows = []
        for row in batch:
            ids: list[int] = []
            soft: list[int] = []
            for segment in row:
                if isinstance(segment, int):
                    base = where[segment] * soft_len
                    ids += [-1] * soft_len
                    soft += list(range(base, base + soft_len))
                else:
                    ids += list(segment)
                    soft += [-1] * len(segment)
            flat_rows.append((ids, soft))
        length = _bucket(max(len(ids) for ids, _ in flat_rows), LENGTH_BUCKET, multiple=True)
        rows = _bucket(len(batch), self.batch_size)
        ids_arr = np.zeros((rows, length), np.int32)
        soft_arr = np.full((rows, length), -1, np.int32)
        mask = np.zeros((rows, length), bool)
        for i, (ids, soft) in enumerate(flat_rows + [flat_rows[0]] * (rows - len(batch))):  # pad rows: copies
            n = len(ids)
            ids_arr[i, length - n:], soft_arr[i, length - n:], mask[i, length - n:] = ids, soft, True
        return ids_arr, soft_arr, mask

    def caption_features(self, features: np.ndarray) -> list[str]:
        """A caption per feature row [N, F] (from the store, or `image_features`)."""
        prompt = self._ids(self.prompt)
        return self._generate(np.asarray(features, np.float32), [[i, prompt] for i in range(len(features))])

    def caption(self, images: Sequence[ImageLike]) -> list[str]:
        """A caption per image."""
        return self.caption_features(self.image_features(images))

    def answer_features(self, features: np.ndarray, questions: Sequence[str],
                        context: Sequence[Sequence[tuple[np.ndarray, str, str]]] = ()) -> list[str]:
        """An answer per (feature row, question); `context[i]` holds row i's in-context examples as
        (feature row [F], question, answer), shown before it (LiMBeR's n-shot VQA)."""
        features = np.asarray(features, np.float32)
        if len(questions) != len(features):
            raise ValueError(f"{len(questions)} questions for {len(features)} images")
        bank = [features]
        rows: list[list[Segment]] = []
        offset = len(features)
        for i, question in enumerate(questions):
            row: list[Segment] = []
            for feature, q, a in (context[i] if context else ()):
                bank.append(np.asarray(feature, np.float32)[None])
                row += [offset, self._ids(VQA_EXAMPLE.format(question=q, answer=a))]
                offset += 1
            rows.append(row + [i, self._ids(VQA_PROMPT.format(question=question))])
        return [first_answer_line(t) for t in self._generate(np.concatenate(bank), rows)]

    def answer(self, images: Sequence[ImageLike], questions: Sequence[str]) -> list[str]:
        """A zero-shot answer per (image, question)."""
        return self.answer_features(self.image_features(images), questions)


def _bucket(n: int, cap: int, multiple: bool = False) -> int:
    """`n` rounded up to a multiple of `cap` (multiple=True), else to a power of two (at most `cap`, at least n)."""
    if multiple:
        return -(-n // cap) * cap
    return max(n, min(cap, 1 << max(0, n - 1).bit_length()))
