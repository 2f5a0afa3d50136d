"""Stage 1 of every task: the configured frozen CLIP (and language model), and the image features CLIP
computes once into the store."""

from __future__ import annotations

import os
import shutil
import tempfile

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from aape_jax import clip as clip_lib
from aape_jax import distributed, lm, storage, toyworld
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.tiny import write_checkpoint
from aape_jax.data.feature_store import FeatureStore, extract_image_features, skipped_rows
from aape_jax.data.text_features import clip_fingerprint
from aape_jax.data.types import Example

# Images per encoder call during extraction: the progress bar moves once per call. (The features can
# differ from those of another batch size in the last float bits: XLA compiles each padded batch
# shape on its own. The feature-store key does not include it, so existing entries stay in use.)
EXTRACT_BATCH = 32


def load_clip(config: ml_collections.ConfigDict, workdir: str) -> FrozenCLIP:
    """The configured CLIP: a checkpoint, the toy world's pretrained one ("toyworld"), or a random one
    (`random_clip_dir`) when `config.clip` is empty."""
    dtype = jnp.dtype(config.clip_dtype)
    if config.clip == toyworld.CLIP_NAME:
        # Pretrained once per machine and cached (aape_jax.toyworld); process 0 first, so that
        # processes sharing a machine do not all pretrain.
        tokenizer_dir = config.toyworld_tokenizer_dir or None
        path = toyworld.pretrained_clip(tokenizer_dir) if distributed.is_main_process() else None
        distributed.barrier("toy-world clip ready")
        return clip_lib.load(path or toyworld.pretrained_clip(tokenizer_dir), dtype=dtype)
    if config.clip:
        return clip_lib.load(config.clip, dtype=dtype)
    directory = random_clip_dir(workdir, config.random_clip_geometry)
    _write_random_once(workdir, directory, f"a randomly initialised {config.random_clip_geometry} CLIP",
                       lambda tmp: write_checkpoint(tmp, config.random_clip_geometry, seed=0))
    return clip_lib.load(directory, dtype=dtype)


# Words of the generated caption and VQA sets, so a random decoder's tokenizer has them as tokens.
_RANDOM_LM_CORPUS = (
    "a picture of a red circle and a blue square on a grey background",
    "two shapes : a green triangle and a yellow star , an image showing a purple cross on a noisy backdrop",
    "there is an orange diamond in this picture , a drawing with a black ring and a white hexagon",
    "Q: how many shapes are there ? A: three . Q: what colour is the circle ? A: red . is there a square ? yes no",
)


def load_lm(config: ml_collections.ConfigDict, workdir: str) -> lm.LanguageModel:
    """The configured frozen decoder: a checkpoint (`config.lm`), or a random tiny one of
    `config.random_lm_family` (`random_lm_dir`) when `config.lm` is empty."""
    dtype, param_dtype = jnp.dtype(config.lm_dtype), jnp.dtype(config.lm_param_dtype)
    if config.lm:
        return lm.load(config.lm, dtype=dtype, param_dtype=param_dtype)
    from aape_jax.lm import tiny  # the random decoder's writer, only for runs without a checkpoint

    directory = random_lm_dir(workdir, config.random_lm_family)
    _write_random_once(workdir, directory, f"a randomly initialised {config.random_lm_family} decoder",
                       lambda tmp: tiny.write_checkpoint(tmp, config.random_lm_family, seed=0,
                                                         corpus=_RANDOM_LM_CORPUS))
    return lm.load(directory, dtype=dtype, param_dtype=param_dtype)


def random_clip_dir(workdir: str, geometry: str) -> str:
    """Where a run without `config.clip` keeps its random CLIP: WORKDIR/random_clip, or for a bucket
    workdir this machine's cache (`toyworld.cache_root`), since CLIP loads from local files."""
    if storage.is_remote(workdir):
        return str(toyworld.cache_root() / "random_clip" / f"{geometry}-seed0")
    return os.path.join(workdir, "random_clip")


def random_lm_dir(workdir: str, family: str) -> str:
    """Where a run without `config.lm` keeps its random decoder (as `random_clip_dir`)."""
    if storage.is_remote(workdir):
        return str(toyworld.cache_root() / "random_lm" / f"{family}-seed0")
    return os.path.join(workdir, "random_lm")


def _write_random_once(workdir: str, directory: str, what: str, write) -> None:
    """`write(folder)` into `directory` unless it holds a config.json; on a shared workdir by process 0
    (the others wait), on a bucket workdir by every host into its own local cache."""
    if storage.is_remote(workdir):  # hosts share no disk: each writes its own (identical) copy
        _write_random(directory, what, write)
    elif not os.path.isfile(os.path.join(directory, "config.json")):
        if distributed.is_main_process():
            _write_random(directory, what, write)
        distributed.barrier(f"{os.path.basename(directory)} written")


def _write_random(directory: str, what: str, write) -> None:
    """Writes a random checkpoint to `directory` unless it is there: into a temporary folder renamed
    into place, so processes sharing a machine never read a half-written one."""
    if os.path.isfile(os.path.join(directory, "config.json")):
        return
    logging.info("writing %s to %s", what, directory)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(directory), prefix=f".{os.path.basename(directory)}.")
    write(tmp)
    try:
        os.rename(tmp, directory)
    except OSError:  # another process renamed its copy first (or a stale empty folder is there)
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(directory, "config.json")):
            raise


def image_features(model: FrozenCLIP, store: FeatureStore, examples: list[Example], data_key: dict, *,
                   augment: bool, views: int, seed: int, desc: str, grid: bool = False, workers: int | None = None,
                   on_bad_image: str = "fail") -> np.ndarray:
    """Cached CLIP image features [N, views, D] (normalised later, in the step); with `grid`, rows of
    `FrozenCLIP.encode_image_grid` [N, views, D + P * W] (the feature, then the patch tokens).

    Images are decoded by `workers` threads (None: one per core), which changes nothing in the result.
    With `on_bad_image="skip"` an image that cannot be decoded gets NaN rows (`drop_skipped` removes them)."""
    key = {
        "clip": clip_fingerprint(model),
        "transform": model.transform.key(),
        "data": data_key,
        "examples": [[e.key, e.label] for e in examples],
        "augment": augment, "views": views, "seed": seed,
        **({"grid": True} if grid else {}),  # absent otherwise: the stores written before grids stay valid
        **({"on_bad_image": on_bad_image} if on_bad_image != "fail" else {}),
    }
    encode = model.encode_image_grid if grid else model.encode_image

    def compute(rows: slice) -> dict[str, np.ndarray]:
        z = extract_image_features(encode, examples, model.transform, views=views, seed=seed,
                                   augment=augment, batch_size=min(model.max_batch, EXTRACT_BATCH), desc=desc,
                                   rows=rows, workers=workers, on_bad_image=on_bad_image)
        return {"z": z}

    return store.get_or_compute_sharded("images", key, len(examples), compute)["z"]


def drop_skipped(examples: list[Example], features: np.ndarray, what: str) -> tuple[list[Example], np.ndarray,
                                                                                      list[str]]:
    """The examples and features without those `image_features(..., on_bad_image="skip")` could not decode,
    and the keys of those (logged, for the run's metrics)."""
    skipped = skipped_rows(features)
    if not skipped.any():
        return examples, features, []
    keys = [e.key for e, s in zip(examples, skipped) if s]
    logging.warning("%s: left out %d image(s) that cannot be decoded: %s", what, len(keys), ", ".join(keys))
    return [e for e, s in zip(examples, skipped) if not s], features[~skipped], keys
