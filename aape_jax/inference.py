"""Inference with a trained AAPE generator: jitted, any class list, no LLM, no aggregator.

    from aape_jax import AAPEClassifier
    clf = AAPEClassifier.load(workdir)               # or AAPEClassifier.load(workdir, clip="path/or/hub-id")
    probs = clf.predict_proba(images, class_names)   # np.float32 [N, C]
    labels = clf.predict(images, class_names)        # list[str]

    clf.export(class_names, "scores.bin")            # image -> scores, via jax.export
    scores = ExportedClassifier.load("scores.bin")(images)   # no training code needed

Text work (template features or template ids) is cached per class list.
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
import orbax.checkpoint as ocp

from aape_jax import clip as clip_lib
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.model import CLIP
from aape_jax.clip.preprocess import ImageLike, ImageTransform, eval_transform
from aape_jax.models.aape import AAPE, AAPEConfig
from aape_jax.models.heads import ClassText, template_ids
from aape_jax.train_step import make_logits_fn

_EXPORT_META = ".json"


def _read_run_config(workdir: str) -> dict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
    with open(path) as f:
        return json.load(f)["config"]


def _restore_params(workdir: str) -> Any:
    """The trainable tree of the workdir's latest checkpoint (no optimizer config needed)."""
    directory = os.path.join(workdir, "checkpoints")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:
        raise RuntimeError(f"checkpoint step {step} in {directory} cannot be restored: {e}") from e
    finally:
        manager.close()
    return restored["state"]["params"]


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
        self._class_text: dict[tuple[str, ...], ClassText] = {}
        module = self.clip.module
        logits_fn = make_logits_fn(self.model, module)

        def probs(params, clip_params, pixels, class_text):
            z = module.apply({"params": clip_params}, pixels, method=CLIP.encode_image)
            logits = logits_fn(params, z, class_text, clip_params, clip_params["logit_scale"])
            return jax.nn.softmax(logits, axis=-1)

        self._probs = jax.jit(probs)
        self._probs_fn = probs

    @classmethod
    def load(cls, workdir: str | os.PathLike, clip: str | None = None, dtype: Any = None) -> AAPEClassifier:
        """Loads the workdir's latest checkpoint and the CLIP it was trained on (or `clip`)."""
        workdir = os.fspath(workdir)
        config = _read_run_config(workdir)
        path = clip or config["clip"] or os.path.join(workdir, "random_clip")
        frozen = clip_lib.load(path, dtype=jnp.dtype(dtype or config["clip_dtype"]))
        m = config["model"]
        aape_cfg = AAPEConfig(
            embed_dim=frozen.config.projection_dim, token_width=frozen.config.text.hidden_size,
            combine=m["combine"], aggregator=m["aggregator"], num_heads=m["num_heads"],
            aggregator_hidden=m["aggregator_hidden"], generator_hidden=m["generator_hidden"],
            num_tokens=m["num_tokens"], token_position=m.get("token_position", "prefix"),
        )
        return cls(frozen, AAPE(aape_cfg), _restore_params(workdir), m["template"])

    def class_text(self, class_names: Sequence[str]) -> ClassText:
        """Template features and ids for a class list (cached)."""
        names = tuple(class_names)
        if not names:
            raise ValueError("no class names given")
        if names not in self._class_text:
            texts = [self.template.format(c) for c in names]
            z = self.clip.encode_text(self.clip.tokenize(texts))
            ids, eot = template_ids(self.clip.tokenizer, texts, self.model.config.num_tokens)
            self._class_text[names] = ClassText(
                features=jnp.asarray(z / np.linalg.norm(z, axis=-1, keepdims=True)),
                ids=jnp.asarray(ids), eot=jnp.asarray(eot), token_position=self.model.config.token_position,
            )
        return self._class_text[names]

    def predict_proba(self, images: ImageLike | Sequence[ImageLike], class_names: Sequence[str],
                      batch_size: int = 32) -> np.ndarray:
        """Class probabilities np.float32 [N, C] for PIL images, uint8 HWC arrays or paths."""
        ct = self.class_text(class_names)
        items = images if isinstance(images, (list, tuple)) else [images]
        out = []
        for start in range(0, len(items), batch_size):
            pixels = self.clip.preprocess(items[start : start + batch_size])
            n = len(pixels)
            padded = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - n, axis=0)])  # one compile
            out.append(np.asarray(self._probs(self.params, self.clip.params, padded, ct))[:n])
        return np.concatenate(out).astype(np.float32)

    def predict(self, images: ImageLike | Sequence[ImageLike], class_names: Sequence[str]) -> list[str]:
        """The most probable class name per image."""
        return [class_names[i] for i in self.predict_proba(images, class_names).argmax(-1)]

    def export(self, class_names: Sequence[str], path: str | os.PathLike) -> None:
        """Serialises image pixels [b, R, R, 3] -> probabilities [b, C] with `jax.export`.

        Weights and the class list are baked in; `path` gets the StableHLO
        artifact and `path + ".json"` the class names and preprocessing.
        """
        ct = self.class_text(class_names)
        r = self.clip.config.vision.image_size
        fn = jax.jit(lambda pixels: self._probs_fn(self.params, self.clip.params, pixels, ct))
        (b,) = jax.export.symbolic_shape("b")
        exported = jax.export.export(fn)(jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32))
        path = os.fspath(path)
        with open(path, "wb") as f:
            f.write(exported.serialize())
        with open(path + _EXPORT_META, "w") as f:
            json.dump({"class_names": list(class_names), "transform": dataclasses.asdict(self.clip.transform)}, f)


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
        with open(path, "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        with open(path + _EXPORT_META) as f:
            meta = json.load(f)
        t = meta["transform"]
        transform = ImageTransform(t["resize"], t["crop_size"], tuple(t["mean"]), tuple(t["std"]))
        return cls(meta["class_names"], transform, exported)

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Class probabilities np.float32 [N, C]."""
        return np.asarray(self.exported.call(eval_transform(images, self.transform)))
