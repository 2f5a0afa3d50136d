"""Decoding and augmentation on a pool of worker threads, in order, a bounded number of batches ahead.

`ViewBatches` turns a list of (example, view) jobs into normalised pixel
batches for an image encoder. Each image is one task on a thread pool
(`workers` threads) that does all of that image's work: decode, resize or
augment, crop, and normalise straight into its row of the batch. PIL decodes and
resizes in C with the GIL released, so threads scale across cores without
pickling images and pixels between processes, and the calling thread is left
free to drive the encoder (`python -m aape_jax.bench pipeline` measures the
scaling; on 2 cores threads measured faster than a process pool). While the
caller encodes batch i, the pool already works on the next `prefetch` batches;
no more than `prefetch + 1` float32 batches (the one handed out included) are
ever being filled or waiting, so memory is bounded by the prefetch depth, whatever
the size of the source.

A view's pixels depend only on (seed, view, example index): view v of example
i draws from its own `np.random.default_rng([seed, v, i])`, so any number of
workers (or none) gives bit-identical batches.

An image that cannot be decoded raises `BadImageError` naming the example's
key and file when its batch is reached (`on_bad_image="fail"`), or with
"skip" is logged, replaced by zeros and listed in `bad` for the caller to drop
(its features are meaningless); the pool is shut down (pending images
cancelled, running ones finished) whenever iteration stops, by an error,
Ctrl-C or the caller, so no worker is left behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from aape_jax.clip.preprocess import ImageTransform, augment_crop, eval_crop, normalize
from aape_jax.data.types import Example
from aape_jax.errors import BadImageError

# Batches decoded ahead of the one being encoded (each holds `batch_size` images).
DEFAULT_PREFETCH = 2
ON_BAD_IMAGE = ("fail", "skip")


def default_workers() -> int:
    """Decode threads when the config leaves it to us: one per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


def view_crop(example: Example, transform: ImageTransform, *, augment: bool, seed: int, view: int,
              index: int) -> np.ndarray:
    """uint8 [crop_size, crop_size, 3] of view `view` of example `index` (`index` into the whole source).

    Raises:
      BadImageError: the image cannot be read or decoded (naming the example's key and the cause).
    """
    try:
        if augment:
            return augment_crop(example.image, transform, np.random.default_rng([seed, view, index]))
        return eval_crop(example.image, transform)
    except (OSError, ValueError) as e:
        image = example.image
        where = os.fspath(image) if isinstance(image, (str, os.PathLike)) else getattr(image, "name", "")
        cause = e.__cause__ if e.__cause__ is not None else e  # load_image's message repeats the file
        raise BadImageError(f"{where} (example {example.key!r})" if where else f"of example {example.key!r}",
                            str(cause)) from e


class ViewBatches:
    """Normalised pixel batches of (example index, view) jobs, decoded `prefetch` batches ahead.

    Attributes:
      examples: the source's examples (indices in `jobs` point into it).
      jobs: (example index, view) per output row, in order.
      transform: preprocessing (crop size, normalisation).
      augment: CoOp's random resized crop + flip (else the eval transform).
      seed: augmentation seed.
      batch_size: rows per batch.
      workers: decode threads; 0 decodes in the calling thread.
      prefetch: batches decoded ahead (>= 1).
      on_bad_image: "fail" (raise `BadImageError`) or "skip" (zeros, listed in `bad`).
      bad: {example index: why} of the images skipped so far.
    """

    def __init__(self, examples: Sequence[Example], jobs: Sequence[tuple[int, int]], transform: ImageTransform,
                 *, augment: bool, seed: int, batch_size: int, workers: int | None = None,
                 prefetch: int = DEFAULT_PREFETCH, on_bad_image: str = "fail") -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"on_bad_image is {on_bad_image!r}; choose one of {ON_BAD_IMAGE}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        workers = default_workers() if workers is None else workers
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.examples, self.jobs, self.transform = examples, list(jobs), transform
        self.augment, self.seed, self.batch_size = augment, seed, batch_size
        self.workers, self.prefetch, self.on_bad_image = workers, prefetch, on_bad_image
        self.bad: dict[int, str] = {}
        self._lock = threading.Lock()
        self.max_pending = 0  # most batches ever decoded or decoding and not handed out (tests read it)

    def _crop(self, job: tuple[int, int]) -> np.ndarray:
        i, v = job
        try:
            return view_crop(self.examples[i], self.transform, augment=self.augment, seed=self.seed, view=v, index=i)
        except BadImageError as e:
            if self.on_bad_image == "fail":
                raise
            with self._lock:
                first = i not in self.bad
                self.bad[i] = str(e)
            if first:
                logging.warning("skipping %s (dataset.on_bad_image='skip')", e)
            c = self.transform.crop_size
            return np.zeros((c, c, 3), np.uint8)

    def _fill(self, pixels: np.ndarray, row: int, job: tuple[int, int]) -> None:
        # The whole per-image work, normalisation included, runs on the worker: what is left on the
        # calling thread does not grow with the workers, so adding workers scales (Amdahl).
        normalize(self._crop(job), self.transform, out=pixels[row])

    def _empty(self, start: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        jobs = self.jobs[start : start + self.batch_size]
        c = self.transform.crop_size
        return np.empty((len(jobs), c, c, 3), np.float32), jobs

    def batches(self, starts: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 pixels [n, R, R, 3]) of rows `jobs[start : start + batch_size]`, for each start
        in order."""
        if self.workers == 0:
            for start in starts:
                self.max_pending = max(self.max_pending, 1)
                pixels, jobs = self._empty(start)
                for row, job in enumerate(jobs):
                    self._fill(pixels, row, job)
                yield start, pixels
            return
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        pending: collections.deque[tuple[int, np.ndarray, list[concurrent.futures.Future]]] = collections.deque()
        todo = iter(starts)
        try:
            while True:
                while len(pending) < self.prefetch + 1:  # the batch being handed out, then `prefetch` more
                    start = next(todo, None)
                    if start is None:
                        break
                    pixels, jobs = self._empty(start)
                    pending.append((start, pixels, [pool.submit(self._fill, pixels, row, job)
                                                    for row, job in enumerate(jobs)]))
                    self.max_pending = max(self.max_pending, len(pending))
                if not pending:
                    return
                start, pixels, futures = pending.popleft()
                for f in futures:
                    f.result()  # raises the image's error, if any
                yield start, pixels
        finally:
            # Whatever ended the loop (done, an error, Ctrl-C, the caller stopping): drop the queued
            # images and wait for the running ones, so no thread outlives the extraction.
            pool.shutdown(wait=True, cancel_futures=True)
