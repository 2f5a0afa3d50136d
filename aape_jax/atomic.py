"""Atomic file writes: readers see the old file or the new one, never a torn one.

The content goes to a temporary file in the target's directory (os.replace is
atomic only within one file system), is fsynced, then renamed over the target;
whatever interrupts the write, the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """`with atomic_open(path, "wb") as f: ...` writes `path` atomically on a clean exit."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    """`json.dump(payload)` to `path`, atomically."""
    with atomic_open(path) as f:
        json.dump(payload, f, indent=indent, ensure_ascii=False)
        f.write("\n")
