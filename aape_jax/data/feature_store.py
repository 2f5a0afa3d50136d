"""On-disk cache of frozen-CLIP outputs (text embeddings, image features).

Stage 1 of the pipeline encodes every image (K augmented views per training
image) and every prompt once; stage 2 only reads these arrays.  Entries are
``.npz`` files named by a fingerprint of everything that determines their
content (model weights digest, data keys, preprocessing, seeds), so reruns and
sweeps reuse them and any change of input recomputes.

Safety rules, because a silently wrong cache would corrupt every result built
on it:

* The full key is stored inside the file and compared on load, so a
  fingerprint-prefix collision or a file copied between stores is caught.
* Every array's sha256 is stored and checked on load; a ``__complete__``
  marker is written last-in-dict and required.
* Writes go to a temp file in the same directory, are fsynced and
  ``os.replace``d into place: readers see the old file or the new one, never a
  partial one, and concurrent writers of one entry leave one complete file
  (the last rename wins).
* Anything unusable is logged and treated as a miss, so the caller recomputes.
* Image-feature extraction inside `get_or_compute` / `get_or_compute_sharded`
  saves its finished batches every `CHUNK_IMAGES` images or `CHUNK_SECONDS`
  seconds as chunk entries in ``<kind>-<fingerprint[:16]>.partial/`` (same
  format and checks); a rerun after a kill loads them and encodes only the
  rest, on the same batch grid, so the entry is bit-identical to an
  uninterrupted extraction. The folder is removed once the entry is saved.
* Files get the user's umask (0644 by default), folders 0755 (`aape_jax.atomic`).
* The store may be a bucket folder (``gs://...``, `aape_jax.storage`): an
  entry is one object, uploaded whole once complete (`aape_jax.atomic`), so a
  killed writer leaves the chunks it had saved and no entry; the checks above
  still catch an object damaged another way.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import io
import os
import pathlib
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from aape_jax import atomic, distributed, storage
from aape_jax.clip.preprocess import ImageTransform
from aape_jax.data.pipeline import DEFAULT_PREFETCH, ViewBatches
from aape_jax.data.types import Example

__all__ = ["fingerprint", "file_digest", "FeatureStore", "extract_image_features"]

# Reserved array names inside an entry; user arrays may not start with "__".
_KEY = "__key__"
_CHECKSUMS = "__checksums__"
_COMPLETE = "__complete__"
# A local store's paths are pathlib's (as they always were), a bucket's epath's.
StorePath = pathlib.Path | epath.Path
_FILE_CHUNK = 8 << 20  # 8 MiB: large sequential reads, bounded memory
# Extraction saves its finished batches once this many images or seconds have accumulated
# (whichever comes first; a kill loses at most that much work).
CHUNK_IMAGES = 2048
CHUNK_SECONDS = 60.0


# --------------------------------------------------------------------------- #
# Fingerprints
# --------------------------------------------------------------------------- #
def _array_digest(a: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-order bytes of `a`.

    dtype and shape are included so e.g. float32 [2, 3] and [3, 2] (same bytes)
    or an int32 / float32 reinterpretation never collide.
    """
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        raise TypeError("object arrays cannot be fingerprinted or stored (no stable bytes)")
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def _canonical(value: Any) -> Any:
    """`value` as plain JSON data with one spelling per meaning.

    Arrays and bytes are replaced by a content digest (keys stay small and
    printable); tuples become lists; paths become strings; dataclasses (e.g.
    ``ImageTransform``) become dicts.  Anything else -- notably objects whose
    ``str`` holds a memory address -- is a TypeError rather than a key that
    silently changes between runs.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"non-finite float {f} in a feature-store key")
        return f
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _array_digest(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": hashlib.sha256(bytes(value)).hexdigest()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": type(value).__name__,
            **{f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"feature-store key dicts need str keys, got {k!r}")
            out[k] = _canonical(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    raise TypeError(
        f"cannot put a {type(value).__name__} into a feature-store key; use JSON data, "
        "numpy arrays, bytes, paths or dataclasses of those"
    )


def _canonical_json(parts: Mapping[str, Any]) -> str:
    return json.dumps(
        _canonical(parts), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def fingerprint(parts: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys) of `parts`.

    numpy arrays and bytes contribute their content's digest, so e.g. a list of
    example keys or a weights digest can be passed directly.
    """
    return hashlib.sha256(_canonical_json(parts).encode("utf-8")).hexdigest()


_digest_cache: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, streamed in 8 MiB chunks.

    Cached in-process per (real path, size, mtime_ns): checkpoint files are
    hundreds of MB and are fingerprinted once per feature-store key; a
    rewritten file changes size or mtime and is hashed again.
    """
    real = os.path.realpath(os.fspath(path))
    st = os.stat(real)
    cache_key = (real, st.st_size, st.st_mtime_ns)
    with _digest_lock:
        hit = _digest_cache.get(cache_key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(_FILE_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _digest_lock:
        _digest_cache[cache_key] = digest
    return digest


# --------------------------------------------------------------------------- #
# Store
# --------------------------------------------------------------------------- #
class FeatureStore:
    """A directory of ``<kind>-<fingerprint[:16]>.npz`` entries.

    Attributes:
      root: the directory (created on first save), local or a bucket's.
    """

    def __init__(self, root: str | os.PathLike):
        self.root: StorePath = storage.path(root) if storage.is_remote(root) else pathlib.Path(root)

    def path(self, kind: str, key: Mapping[str, Any]) -> StorePath:
        """Where the entry for (kind, key) lives; `kind` names the file family."""
        if not kind or not all(c.isalnum() or c in "_." for c in kind):
            # kind becomes part of a file name, and "-" separates it from the digest.
            raise ValueError(f"kind must be non-empty [A-Za-z0-9_.], got {kind!r}")
        return self.root / f"{kind}-{fingerprint(key)[:16]}.npz"

    def load(self, kind: str, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None when absent or unusable (with a warning why)."""
        path = self.path(kind, key)
        if not path.exists():
            return None
        want_key = _canonical_json(key)
        try:
            # A bucket's object is read whole: np.load's zip reader would make one request per seek.
            source = io.BytesIO(path.read_bytes()) if storage.is_remote(path) else path
            with np.load(source, allow_pickle=False) as npz:
                names = set(npz.files)
                if _COMPLETE not in names:
                    return _unusable(path, "no __complete__ marker (interrupted write?)")
                if _KEY not in names or _CHECKSUMS not in names:
                    return _unusable(path, "no stored key or checksums (not written by FeatureStore?)")
                stored_key = str(npz[_KEY][()])
                if stored_key != want_key:
                    return _unusable(
                        path,
                        f"stored key differs from the requested one (written for other "
                        f"inputs, e.g. another checkpoint): stored {_short(stored_key)}, "
                        f"requested {_short(want_key)}",
                    )
                checksums = json.loads(str(npz[_CHECKSUMS][()]))
                arrays = {n: npz[n] for n in names if not n.startswith("__")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            # np.load raises all of these for truncated / garbled zips.
            return _unusable(path, f"cannot read it ({type(e).__name__}: {e})")
        if set(checksums) != set(arrays):
            return _unusable(path, f"arrays {sorted(arrays)} do not match checksummed {sorted(checksums)}")
        for name, a in arrays.items():
            if _array_digest(a) != checksums[name]:
                return _unusable(path, f"array {name!r} fails its sha256 checksum (corrupt)")
        return arrays

    def save(self, kind: str, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> StorePath:
        """Writes the entry atomically and returns its path."""
        path = self.path(kind, key)
        arrays = _check_arrays(arrays, path)
        checksums = json.dumps({n: _array_digest(a) for n, a in arrays.items()}, sort_keys=True)
        payload = {**arrays, _KEY: np.array(_canonical_json(key)), _CHECKSUMS: np.array(checksums),
                   _COMPLETE: np.array(True)}
        with atomic.atomic_open(path, "wb") as f:
            np.savez(f, **payload)
        if not storage.is_remote(path):
            _fsync_dir(path.parent)
        return path

    def get_or_compute(
        self,
        kind: str,
        key: Mapping[str, Any],
        compute: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """The stored arrays, or `compute()`'s result after saving it.

        With several processes, process 0 computes and writes the entry once;
        the others wait for it and read it (the store must be a bucket or a
        filesystem every host sees).
        """
        path = self.path(kind, key)
        if distributed.is_main_process():
            found = self.load(kind, key)
            if found is not None:
                logging.info("reused %s", path)
            else:
                with self.resumable(kind, key):
                    found = _check_arrays(compute(), path)
                self.save(kind, key, found)
                logging.info("computed %s", path)
            self._remove_partial(kind, key)
        distributed.barrier(f"feature store {path.name}")
        if not distributed.is_main_process():
            found = self._load_written_by_main(kind, key)
        return found

    def get_or_compute_sharded(
        self,
        kind: str,
        key: Mapping[str, Any],
        num_items: int,
        compute_part: Callable[[slice], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Like `get_or_compute` for arrays with one row per item, the work split over processes.

        Each process computes `compute_part(its slice of range(num_items))`
        and writes it as a part; process 0 concatenates the parts into the one
        entry and removes them. An extraction inside `compute_part` resumes
        from its saved chunks after an interruption (see `resumable`), and a
        part already written is not computed again.
        """
        if jax.process_count() == 1:
            return self.get_or_compute(kind, key, lambda: compute_part(slice(0, num_items)))
        path = self.path(kind, key)
        have = distributed.any_process(distributed.is_main_process() and self.load(kind, key) is not None)
        if not have:
            part_key = lambda p: {"entry": path.name, "part": p, "of": jax.process_count()}
            mine = part_key(jax.process_index())
            if self.load(f"{kind}_part", mine) is None:  # a part written before an interruption is kept
                with self.resumable(f"{kind}_part", mine):
                    part = _check_arrays(compute_part(distributed.process_shard(num_items)), path)
                self.save(f"{kind}_part", mine, part)
            self._remove_partial(f"{kind}_part", mine)
            distributed.barrier(f"feature store parts {path.name}")
            if distributed.is_main_process():
                parts = []
                for p in range(jax.process_count()):
                    part = self.load(f"{kind}_part", part_key(p))
                    if part is None:
                        raise RuntimeError(f"part {p} of {path} is missing or damaged: is {self.root} shared by all hosts?")
                    parts.append(part)
                self.save(kind, key, {name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
                for p in range(jax.process_count()):
                    self.path(f"{kind}_part", part_key(p)).unlink(missing_ok=True)
                logging.info("computed %s on %d processes", path, jax.process_count())
            distributed.barrier(f"feature store merged {path.name}")
        return self._load_written_by_main(kind, key)

    def partial_dir(self, kind: str, key: Mapping[str, Any]) -> StorePath:
        """The folder of the resumable chunks of the entry (kind, key)."""
        path = self.path(kind, key)
        return path.with_name(path.stem + ".partial")

    @contextlib.contextmanager
    def resumable(self, kind: str, key: Mapping[str, Any]) -> Iterator[None]:
        """Within it, `extract_image_features` saves and reuses its finished batches for this entry."""
        token = _ACTIVE_CHUNKS.set(_Chunks(self.partial_dir(kind, key), fingerprint(key)))
        try:
            yield
        finally:
            _ACTIVE_CHUNKS.reset(token)

    def _remove_partial(self, kind: str, key: Mapping[str, Any]) -> None:
        storage.rmtree(self.partial_dir(kind, key))

    def _load_written_by_main(self, kind: str, key: Mapping[str, Any]) -> dict[str, np.ndarray]:
        found = self.load(kind, key)
        if found is None:
            raise RuntimeError(
                f"{self.path(kind, key)} was written by process 0 but this process (index "
                f"{jax.process_index()}) cannot read it: the feature store {self.root} must be a bucket "
                "(gs://...) or on a filesystem every host sees"
            )
        return found


def _check_arrays(arrays: Mapping[str, Any], path: StorePath) -> dict[str, np.ndarray]:
    out = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"{path}: array names must be non-empty and not start with '__', got {name!r}")
        a = np.asarray(a)
        if a.dtype.hasobject:
            raise ValueError(f"{path}: array {name!r} has dtype object, which cannot be stored safely")
        out[name] = a
    return out


def _unusable(path: StorePath, why: str) -> None:
    logging.warning("feature store: ignoring %s: %s; it will be recomputed", path, why)


def _short(s: str, n: int = 200) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _fsync_dir(directory: StorePath) -> None:
    """Makes the rename durable; best effort (not every OS/file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# Resumable extraction: chunks of finished batches
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class _Chunks:
    """Where an entry's extraction keeps its finished batches, and the entry's fingerprint."""

    directory: StorePath
    entry: str


_ACTIVE_CHUNKS: contextvars.ContextVar[_Chunks | None] = contextvars.ContextVar("feature_store_chunks",
                                                                                 default=None)
_CHUNK_NAME = re.compile(r"^chunk\.(\d+)\.(\d+)-[0-9a-f]{16}\.npz$")


class _ChunkLog:
    """One extraction's chunks: rows [start, stop) of its job list, saved as store entries.

    The key holds everything that fixes the bytes of a chunk besides the
    entry's own key: the jobs (examples, views, seed, augmentation, rows) and
    the batch grid (`batch_size`), so a chunk is reused only by an extraction
    that would compute exactly the same batches.
    """

    def __init__(self, chunks: _Chunks, params: Mapping[str, Any]):
        self.store = FeatureStore(chunks.directory)
        self.params = {"entry": chunks.entry, **params}

    def _key(self, start: int, stop: int) -> dict[str, Any]:
        return {**self.params, "jobs": [start, stop]}

    def load(self, num_jobs: int, batch_size: int) -> dict[int, np.ndarray]:
        """{start: features [stop - start, D]} of the usable chunks on disk."""
        found: dict[int, np.ndarray] = {}
        if not self.store.root.is_dir():
            return found
        for name in sorted(p.name for p in self.store.root.iterdir()):
            m = _CHUNK_NAME.match(name)
            if not m:
                continue
            start, stop = int(m.group(1)), int(m.group(2))
            kind = f"chunk.{start}.{stop}"
            if self.store.path(kind, self._key(start, stop)).name != name:
                continue  # another extraction's chunk (other batch size, rows, ...)
            aligned = start % batch_size == 0 and (stop % batch_size == 0 or stop == num_jobs)
            if not (0 <= start < stop <= num_jobs and aligned):
                continue
            arrays = self.store.load(kind, self._key(start, stop))
            z = None if arrays is None else arrays.get("z")
            if z is None or z.ndim != 2 or z.shape[0] != stop - start or z.dtype != np.float32:
                continue
            if start not in found or len(found[start]) < len(z):
                found[start] = z
        return found

    def save(self, start: int, feats: Sequence[np.ndarray]) -> None:
        z = np.concatenate(feats)
        self.store.save(f"chunk.{start}.{start + len(z)}", self._key(start, start + len(z)), {"z": z})


# --------------------------------------------------------------------------- #
# Image feature extraction
# --------------------------------------------------------------------------- #
def skipped_rows(features: np.ndarray) -> np.ndarray:
    """bool [N]: the examples of `extract_image_features(..., on_bad_image="skip")` [N, views, D] whose
    image could not be decoded (all their features are NaN)."""
    return np.isnan(features).all(axis=tuple(range(1, features.ndim))) if features.size else np.zeros(
        len(features), bool)


def extract_image_features(
    encode: Callable[[np.ndarray], Any],
    examples: Sequence[Example],
    transform: ImageTransform,
    *,
    views: int,
    seed: int,
    augment: bool,
    batch_size: int = 64,
    desc: str = "image features",
    rows: slice | None = None,
    workers: int | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    on_bad_image: str = "fail",
) -> np.ndarray:
    """Encodes every example (K views each) with a frozen image encoder.

    Images are decoded and augmented by `workers` threads, `prefetch` batches
    ahead of the encoder (`aape_jax.data.pipeline.ViewBatches`); the result is
    bit-identical for any number of workers.

    The progress bar advances after every `encode` call (one batch). Called
    inside `FeatureStore.get_or_compute` / `get_or_compute_sharded` (as
    training does), it resumes from that entry's saved chunks (module
    docstring) and also saves its finished batches when the loop stops on an
    error or Ctrl-C.

    Args:
      encode: float32 NHWC pixel batch [n, H, W, 3] -> features [n, D]
        (e.g. a loaded CLIP's ``encode_image``; may return a jax array).
      examples: images to encode, in output order.
      transform: CLIP preprocessing (crop size, normalisation).
      views: views per example; must be 1 when ``augment`` is False.
      seed: augmentation seed.  View ``v`` of example ``i`` uses its own
        ``np.random.default_rng([seed, v, i])``, so the output depends only on
        (seed, example order, view): not on `batch_size`, and view ``v`` of
        example ``i`` is unchanged when more views or examples are added.
      augment: True applies ``train_augment`` (CoOp's random resized crop +
        flip); False applies the deterministic ``eval_transform``.
      batch_size: images per `encode` call (a batch may mix examples' views).
      desc: progress-bar label.
      rows: encode only `examples[rows]` (one process's share); seeds still
        use the indices into the whole `examples`.
      workers: decode threads (None: one per core; 0: in this thread).
      prefetch: batches decoded ahead of the encoder.
      on_bad_image: "fail" raises on an image that cannot be decoded; "skip"
        logs it and gives all its views NaN features (`skipped_rows` finds them).

    Returns:
      float32 [N, views, D], N the number of examples encoded.

    Raises:
      BadImageError: an image cannot be decoded (naming its file and key); the
        batches encoded before it are kept for the rerun, no entry is written.
      ValueError: bad arguments, inconsistent feature shapes, or a non-finite
        feature (naming the first offending example's key and view).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if not augment and views != 1:
        raise ValueError(f"views must be 1 without augmentation (eval views are identical), got {views}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    selected = range(len(examples))[rows or slice(None)]
    jobs = [(i, v) for i in selected for v in range(views)]  # example-major
    active = _ACTIVE_CHUNKS.get()
    log = None
    if active is not None and jobs:
        log = _ChunkLog(active, {
            "examples": fingerprint({"keys": [e.key for e in examples]}), "num_examples": len(examples),
            "rows": [selected.start, selected.stop], "views": views, "seed": seed, "augment": augment,
            "transform": transform, "batch_size": batch_size,
        })
    done = log.load(len(jobs), batch_size) if log is not None else {}
    out: np.ndarray | None = None

    def place(start: int, feats: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = np.empty((len(selected), views, feats.shape[1]), dtype=np.float32)
        elif feats.shape[1] != out.shape[2]:
            raise ValueError(f"encode returned width {feats.shape[1]} after {out.shape[2]} in earlier batches")
        example_rows, cols = zip(*jobs[start : start + len(feats)])
        out[[i - selected.start for i in example_rows], list(cols)] = feats

    pending: list[np.ndarray] = []  # finished batches not yet saved as a chunk
    pending_start = 0
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal pending, last_flush
        if log is not None and pending:
            log.save(pending_start, pending)
        pending, last_flush = [], time.monotonic()

    reused = sum(len(z) for z in done.values())
    if reused:
        logging.info("%s: reusing %d of %d encoded images from %s", desc, reused, len(jobs), active.directory)
    plan: list[tuple[int, np.ndarray | None]] = []  # (start, a saved chunk's features or None to encode)
    start = 0
    while start < len(jobs):
        plan.append((start, done.get(start)))
        start += len(done[start]) if start in done else batch_size
    decoded = ViewBatches(examples, jobs, transform, augment=augment, seed=seed, batch_size=batch_size,
                          workers=workers, prefetch=prefetch, on_bad_image=on_bad_image)
    with (tqdm(total=len(jobs), desc=desc, unit="img", disable=not distributed.is_main_process()) as bar,
          contextlib.closing(decoded.batches([s for s, saved in plan if saved is None])) as batches):
        try:
            for start, saved in plan:
                if saved is not None:  # a chunk from an interrupted run: same batches, same bytes
                    flush()
                    place(start, saved)
                    pending_start = start + len(saved)
                    bar.update(len(saved))
                    continue
                _, pixels = next(batches)
                chunk = jobs[start : start + batch_size]
                feats = np.asarray(encode(pixels), dtype=np.float32)
                if feats.ndim != 2 or feats.shape[0] != len(chunk):
                    raise ValueError(f"encode returned shape {feats.shape} for {len(chunk)} images; expected [n, D]")
                skipped = np.asarray([i in decoded.bad for i, _ in chunk])
                feats[skipped] = np.nan
                bad = ~np.isfinite(feats).all(axis=1) & ~skipped
                if bad.any():
                    i, v = chunk[int(np.argmax(bad))]
                    raise ValueError(
                        f"non-finite image features for example {examples[i].key!r} (view {v}); "
                        "check the image and the encoder's dtype/weights"
                    )
                place(start, feats)
                pending.append(feats)
                bar.update(len(chunk))
                if (sum(len(z) for z in pending) >= CHUNK_IMAGES
                        or time.monotonic() - last_flush >= CHUNK_SECONDS):
                    flush()
                    pending_start = start + len(chunk)
        except BaseException:
            # Whatever stops the loop (an error, Ctrl-C), the finished batches are kept for the rerun;
            # leaving the `with` stops the decode workers.
            try:
                flush()
            except Exception as e:  # noqa: BLE001 - never mask the original error
                logging.warning("%s: could not save the finished batches: %s", desc, e)
            raise
    if out is None:
        # No examples: the feature width is unknown without calling encode.
        return np.zeros((0, views, 0), dtype=np.float32)
    return out
