"""Inference with a trained AAPE generator: jitted, any class list, no LLM, no aggregator.

    from aape_jax import AAPEClassifier
    clf = AAPEClassifier.load(workdir)               # or AAPEClassifier.load(workdir, clip="path/or/hub-id")
    probs = clf.predict_proba(images, class_names)   # np.float32 [N, C] (SigLIP: per-class sigmoids)
    labels = clf.predict(images, class_names)        # list[str]
    probs = clf.predict_proba_pixels(clf.clip.preprocess(images), class_names)   # from pixels [N, R, R, 3]

    clf.export(class_names, "scores.bin")            # image -> scores, via jax.export
    scores = ExportedClassifier.load("scores.bin")(images)   # no training code needed

What depends only on the class list is computed once per class list and
cached (the `MAX_CLASS_LISTS` most recently used lists): template features and
ids, and for token runs with `token_position="suffix"` the class prefixes'
per-layer keys and values, so per image batch only the [AAPE..., EOT]
positions go through the text tower. An image that cannot be decoded is
reported by path and skipped (its row of probabilities is NaN, its label None,
`clf.skipped` lists it) or, with `on_bad_image="fail"`, raises `errors.BadImageError`.

`load` reads only the trainable tree of the newest restorable checkpoint
(`checkpoint.restore_trainable`, the path training's `config.init` takes too).
A tree that does not fit the run's `config.model` is a `CheckpointError`
naming the directory, the step and the keys; one trained on a CLIP of another
geometry than `clip=` is a `ConfigError` naming both geometries.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from aape_jax import clip as clip_lib
from aape_jax import atomic, storage, toyworld, zeroshot
from aape_jax.checkpoint import ParamsMismatchError, checkpoints_dir, restore_trainable
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.preprocess import ImageLike, ImageTransform, eval_transform
from aape_jax.clip.tiny import GEOMETRIES
from aape_jax.errors import ConfigError
from aape_jax.frozen_stage import random_clip_dir
from aape_jax.data.text_features import class_text
from aape_jax.models.aape import AAPE, aape_config, init_params
from aape_jax.models.heads import ClassPrefixCache, ClassText
from aape_jax.numerics import padded_batches
from aape_jax.train_step import make_logits_fn

_EXPORT_META = ".json"
# A suffix run's prefix cache holds every text layer's keys and values for every class (about
# 0.5 GB for C=1000 on ViT-B/16), so only a few class lists stay cached.
MAX_CLASS_LISTS = 4


def _read_run_config(workdir: str) -> dict:
    path = storage.path(os.path.join(workdir, "config.json"))
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {workdir} a training workdir?",
                          hint="pass the --workdir of a finished AAPE training run")
    return json.loads(storage.read_text(path))["config"]


def _geometry(projection_dim: int, text_width: int) -> str:
    """'projection_dim D, text width W', with the name of a known geometry that has them."""
    names = [n for n, g in GEOMETRIES.items() if (g.projection_dim, g.text.hidden_size) == (projection_dim, text_width)]
    return f"projection_dim {projection_dim}, text width {text_width}" + (f" ({names[0]})" if names else "")


def _check_geometry(workdir: str, config: dict, saved: dict[str, tuple[int, ...]], frozen: FrozenCLIP,
                    clip_source: str, token_head: bool) -> None:
    """A clear error when the checkpoint (its tree's shapes `saved`) was trained on a CLIP of another
    geometry than `frozen`."""
    head = saved.get("head/proj/kernel")
    d_run = saved.get("generator/linear2/kernel", (None,))[-1]
    w_run = head[-1] if head is not None and token_head else None
    d_clip, w_clip = frozen.config.projection_dim, frozen.config.text.hidden_size
    if d_run is None or (d_run == d_clip and w_run in (None, w_clip)):
        return  # not a geometry difference: the mismatch error names what differs
    trained = config["clip"] or f"the random {config.get('random_clip_geometry', 'tiny')} CLIP in {workdir}"
    run_geometry = _geometry(d_run, w_run) if w_run is not None else f"projection_dim {d_run}"
    raise ConfigError(
        f"clip={clip_source!r} has geometry {_geometry(d_clip, w_clip)}, but the run in {workdir} was "
        f"trained on {trained} with geometry {run_geometry}",
        hint="load it with the CLIP it was trained on (leave clip= unset to use the run's config.clip)")


@dataclasses.dataclass
class AAPEClassifier:
    """A frozen CLIP plus the trained generator and head.

    Attributes:
      clip: the frozen CLIP.
      model: the AAPE module (its aggregator is never called here).
      params: the trained tree.
      template: the class template used in training.
    """

    clip: FrozenCLIP
    model: AAPE
    params: Any
    template: str

    def __post_init__(self) -> None:
        # Per class list, least recently used first: its ClassText and, for suffix token runs, its prefix cache.
        self._class_lists: dict[tuple[str, ...], tuple[ClassText, ClassPrefixCache | None]] = {}
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of the images the last call skipped
        module = self.clip.module
        logits_fn = make_logits_fn(self.model, module)
        sigmoid = self.clip.config.sigmoid

        def probs(params: Any, clip_params: Any, pixels: jax.Array, class_text: ClassText,
                  prefix_cache: ClassPrefixCache | None) -> jax.Array:
            z = module.apply({"params": clip_params}, pixels, method="encode_image")  # [B, D]
            logits = logits_fn(params, z, class_text, clip_params, clip_params["logit_scale"], prefix_cache)
            return zeroshot.probabilities(logits, sigmoid, clip_params.get("logit_bias", 0.0))

        self._probs = jax.jit(probs)
        self._probs_fn = probs
        head = self.model.config.head
        self._class_cache = jax.jit(lambda class_text, clip_params: head.class_cache(class_text, module, clip_params))

    @classmethod
    def load(cls, workdir: str | os.PathLike, clip: str | None = None, dtype: Any = None) -> AAPEClassifier:
        """Loads the workdir's (local or ``gs://``) latest checkpoint and the CLIP it was trained on (or `clip`)."""
        workdir = os.fspath(workdir)
        config = _read_run_config(workdir)
        method = config.get("method", "aape")
        if method != "aape":
            raise ConfigError(
                f"{workdir} was trained with method {method!r} (config.method in its config.json); "
                "AAPEClassifier loads only method 'aape' runs",
                hint="evaluate the other methods from their metrics.json, or pass the workdir of an AAPE run")
        checkpoints_dir(workdir)  # before CLIP is loaded (or the toy CLIP pretrained)
        path = clip or config["clip"] or random_clip_dir(workdir, config.get("random_clip_geometry", "tiny"))
        if path == toyworld.CLIP_NAME:
            path = toyworld.pretrained_clip(config.get("toyworld_tokenizer_dir") or None)
        frozen = clip_lib.load(path, dtype=jnp.dtype(dtype or config["clip_dtype"]))
        model = AAPE(aape_config(config["model"], frozen.config))
        abstract = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
        try:
            params, _ = restore_trainable(workdir, abstract)
        except ParamsMismatchError as e:
            _check_geometry(workdir, config, e.got, frozen, path, model.config.head.uses_text_tower)
            raise
        return cls(frozen, model, params, config["model"]["template"])

    def class_text(self, class_names: Sequence[str]) -> ClassText:
        """Template features and ids for a class list (cached)."""
        return self._class_list(class_names)[0]

    def _class_list(self, class_names: Sequence[str]) -> tuple[ClassText, ClassPrefixCache | None]:
        """The class list's ClassText and its head's `class_cache` (for suffix token runs, the prefix cache), LRU."""
        names = tuple(class_names)
        if not names:
            raise ValueError("no class names given")
        entry = self._class_lists.pop(names, None)
        if entry is None:
            ct = class_text(self.clip, self.template, names, self.model.config.head.num_tokens)
            entry = ct, self._class_cache(ct, self.clip.params)
            if len(self._class_lists) >= MAX_CLASS_LISTS:
                del self._class_lists[next(iter(self._class_lists))]
        self._class_lists[names] = entry  # (re)inserted last: the most recently used
        return entry

    def predict_proba_pixels(self, pixels: np.ndarray | jax.Array, class_names: Sequence[str]) -> np.ndarray:
        """Class probabilities np.float32 [B, C] for preprocessed pixels [B, R, R, 3] (`self.clip.preprocess`).

        The scoring `predict_proba` runs per batch: jitted (one compilation per
        batch size), with the class list's cached text work.
        """
        r = self.clip.config.vision.image_size
        if np.ndim(pixels) != 4 or tuple(np.shape(pixels)[1:]) != (r, r, 3):
            raise ValueError(f"expected preprocessed pixels [B, {r}, {r}, 3], got shape {np.shape(pixels)}")
        class_text, prefix_cache = self._class_list(class_names)
        return np.asarray(self._probs(self.params, self.clip.params, pixels, class_text, prefix_cache))

    def predict_proba(self, images: ImageLike | Sequence[ImageLike], class_names: Sequence[str],
                      batch_size: int = 32, on_bad_image: str = "skip") -> np.ndarray:
        """Class probabilities np.float32 [N, C] for PIL images, uint8 HWC arrays or paths.

        An image that cannot be decoded is logged by path and gets a row of
        NaN (`on_bad_image="skip"`; `self.skipped` lists (path, reason) of the
        last call), or raises `errors.BadImageError` (`"fail"`). No images
        give an empty [0, C] array.
        """
        num_classes = self.class_text(class_names).num_classes
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        out = np.full((len(items), num_classes), np.nan, dtype=np.float32)
        self.skipped = []
        for start in range(0, len(items), batch_size):
            pixels, good, bad = zeroshot.preprocess_each(self.clip.preprocess, items[start : start + batch_size],
                                                         on_bad_image, offset=start)
            self.skipped.extend(bad)
            if pixels is not None:
                # Padded to batch_size: one compilation for every batch.
                out[[start + j for j in good]] = padded_batches(lambda p: self.predict_proba_pixels(p, class_names),
                                                                pixels, batch_size)
        if self.skipped:
            logging.warning("AAPEClassifier: skipped %d of %d image(s) that cannot be decoded: %s", len(self.skipped),
                            len(items), ", ".join(path for path, _ in self.skipped))
        return out

    def predict(self, images: ImageLike | Sequence[ImageLike], class_names: Sequence[str],
                on_bad_image: str = "skip") -> list[str | None]:
        """The most probable class name per image (None for an image skipped as undecodable)."""
        probs = self.predict_proba(images, class_names, on_bad_image=on_bad_image)
        return [None if np.isnan(p).any() else class_names[int(p.argmax())] for p in probs]

    def export(self, class_names: Sequence[str], path: str | os.PathLike) -> None:
        """Serialises image pixels [b, R, R, 3] -> probabilities [b, C] with `jax.export`.

        Weights and the class list's cached text work (for suffix token runs,
        its prefix cache) are baked in as constants; `path` gets the StableHLO
        artifact and `path + ".json"` the class names and preprocessing (each written atomically; `path`
        may be a bucket's, ``gs://``).
        """
        class_text, prefix_cache = self._class_list(class_names)
        r = self.clip.config.vision.image_size
        fn = jax.jit(lambda pixels: self._probs_fn(self.params, self.clip.params, pixels, class_text, prefix_cache))
        (b,) = jax.export.symbolic_shape("b")
        exported = jax.export.export(fn)(jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32))
        path = os.fspath(path)
        with atomic.atomic_open(path, "wb") as f:
            f.write(exported.serialize())
        atomic.write_json(path + _EXPORT_META, {"class_names": list(class_names),
                                                "transform": dataclasses.asdict(self.clip.transform)}, indent=None)


@dataclasses.dataclass
class ExportedClassifier:
    """A `jax.export`ed AAPE classifier: preprocessing + the serialised scores function.

    Attributes:
      class_names: the baked-in class list.
      transform: CLIP's eval preprocessing.
      exported: the deserialised `jax.export.Exported`.
    """

    class_names: list[str]
    transform: ImageTransform
    exported: Any

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExportedClassifier:
        path = os.fspath(path)
        exported = jax.export.deserialize(bytearray(storage.path(path).read_bytes()))
        meta = json.loads(storage.read_text(path + _EXPORT_META))
        t = meta["transform"]
        transform = ImageTransform(t["resize"], t["crop_size"], tuple(t["mean"]), tuple(t["std"]),
                                   squash=t.get("squash", False))
        return cls(meta["class_names"], transform, exported)

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Class probabilities np.float32 [N, C]."""
        return np.asarray(self.exported.call(eval_transform(images, self.transform)))
