"""Atomic file writes: readers see the old file or the new one, never a torn one.

Locally, the content goes to a temporary file in the target's directory (os.replace is
atomic only within one file system), is fsynced, then renamed over the target;
whatever interrupts the write, the temporary file is removed. The file gets the
mode a plain `open()` would give it (0666 less the umask: 0644 by default), not
the 0600 of `tempfile.mkstemp`, so a store or workdir shared by a team stays
readable. A full disk is reported as `errors.NoSpaceError` naming the target.

On a bucket (``gs://``, `aape_jax.storage`) an object appears whole when its
upload finishes, or not at all: the content is gathered in memory and uploaded
once on a clean exit, so an error or a kill before then leaves the old object.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any

from aape_jax import storage
from aape_jax.errors import NoSpaceError, no_space

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file: 0666 less the umask (0644 for umask 022)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """`with atomic_open(path, "wb") as f: ...` writes `path` (local or a bucket's) atomically on a clean exit."""
    path = os.fspath(path)
    if storage.is_remote(path):
        with io.BytesIO() as buffer:
            if "b" in mode:
                yield buffer
            else:
                text = io.TextIOWrapper(buffer, encoding="utf-8", write_through=True)
                yield text
                text.detach()
            storage.path(path).write_bytes(buffer.getvalue())
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpaceError(path) from e
        raise
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            os.fchmod(f.fileno(), file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if no_space(e) is not None and not isinstance(e, NoSpaceError):
            raise NoSpaceError(path) from e
        raise


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    """`json.dump(payload)` to `path`, atomically."""
    with atomic_open(path) as f:
        json.dump(payload, f, indent=indent, ensure_ascii=False)
        f.write("\n")
