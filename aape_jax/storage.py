"""Where runs read and write: a local path or a bucket (``gs://``), through one path type.

A run's workdir, feature store, checkpoints, datasets and prompt files, and
the results and sweep tools, are read and written through `path` (an
`etils.epath.Path`, the path type Orbax, TFDS and big_vision use; the CLIP
checkpoint itself is read from a local folder or the hub): local paths behave
as with `os` and `open`, ``gs://bucket/...`` goes to Cloud Storage through
gcsfs (and through TensorStore for Orbax's arrays). What differs on a
bucket, and how this module handles it:

* No directories and no atomic rename: an object appears whole when its upload
  finishes, or not at all, so `aape_jax.atomic` uploads once instead of
  renaming a temporary file, and `move` copies then deletes.
* Listings are not cached (gcsfs would otherwise hide what another host wrote
  after this one listed the folder).
* A storage emulator (``STORAGE_EMULATOR_HOST=http://HOST:PORT``, honoured by
  google-cloud-storage, gcsfs and tensorboardX) is used anonymously, as the
  client libraries do: no credentials are looked up. TensorStore reads its own
  ``TENSORSTORE_GCS_HTTP_URL``; it is set from ``STORAGE_EMULATOR_HOST`` when
  unset.
* `check_writable` proves, before any slow work, that a run can write where
  it was told to: a missing bucket, missing credentials or a path without
  write permission are a `StorageError` naming the path.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import uuid
from collections.abc import Iterator

from etils import epath

from aape_jax.errors import UserError, one_line

__all__ = ["StorageError", "is_remote", "path", "open_text", "read_text", "absolute", "check_writable", "walk",
           "move", "rmtree", "configure"]


class StorageError(UserError, OSError):
    """A path the run cannot read or write (a missing bucket, no credentials, no permission)."""

    hint = "check the path, that the bucket exists, and the credentials (gcloud auth application-default login)"


def is_remote(p: str | os.PathLike) -> bool:
    """Whether `p` names an object store (``gs://...``) rather than a local path."""
    return "://" in os.fspath(p)


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as an `epath.Path`; a bucket path is made ready for gcsfs first (`configure`)."""
    if is_remote(p):
        configure()
    return epath.Path(p)


def open_text(p: str | os.PathLike) -> io.TextIOWrapper:
    """`p` (local or a bucket's) opened for reading as UTF-8 text, as ``open(p, encoding="utf-8")`` does.

    Raises:
      FileNotFoundError: naming `p` as given, as `open` does (gcsfs names its request URL instead).
    """
    try:
        raw = path(p).open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(p)) from None
    return io.TextIOWrapper(raw, encoding="utf-8")  # decoded here: epath's text mode on gs:// uses the locale


def read_text(p: str | os.PathLike) -> str:
    """The UTF-8 text of `p` (local or a bucket's); `open_text`'s errors."""
    with open_text(p) as f:
        return f.read()


def absolute(p: str | os.PathLike) -> str:
    """`p` made absolute: local paths against the working directory, bucket paths as given."""
    p = os.fspath(p)
    return p if is_remote(p) else os.path.abspath(p)


_configured = False
_configure_lock = threading.Lock()


def configure() -> None:
    """Sets up gcsfs and TensorStore for ``gs://`` once per process (before the first bucket access).

    Without an emulator only the listing cache is turned off. With
    ``STORAGE_EMULATOR_HOST`` set, TensorStore is pointed at the emulator too
    and every client is anonymous; gcsfs's default filesystem (which first asks
    the gRPC control API for the bucket's type, and waits a minute for an
    answer an emulator never gives) is replaced by its plain JSON-API one.
    """
    global _configured
    with _configure_lock:
        if _configured:
            return
        import fsspec

        options = fsspec.config.conf.setdefault("gcs", {})
        options.setdefault("cache_timeout", 0)
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            import gcsfs.core

            os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
            os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "anonymous")  # TensorStore: no ADC lookup
            options.setdefault("token", "anon")
            for protocol in ("gs", "gcs"):
                fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
        _configured = True


def _bucket(p: str) -> str:
    return p.split("://", 1)[1].split("/", 1)[0]


def check_writable(p: str | os.PathLike, what: str) -> None:
    """Proves that `p` (a folder; `what` names it in errors, e.g. "--workdir") can be written.

    Local: the folder is created. Bucket: credentials are found (unless an
    emulator is set), the bucket exists, and a probe object is written and
    deleted under `p`.

    Raises:
      StorageError: naming `p` and the cause.
    """
    p = os.fspath(p)
    if not is_remote(p):
        try:
            os.makedirs(p, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{what} {p} cannot be created: {e.strerror or e}") from e
        if not os.access(p, os.W_OK | os.X_OK):
            raise StorageError(f"{what} {p} is not writable by this user")
        return
    if not p.startswith("gs://"):
        raise StorageError(f"{what} {p}: only gs:// buckets and local paths are supported",
                           hint="use gs://BUCKET/... or a local folder")
    configure()
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        import google.auth
        import google.auth.exceptions

        try:
            google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError as e:
            raise StorageError(f"{what} {p}: no Google Cloud credentials found (Application Default Credentials)",
                               hint="run `gcloud auth application-default login`, or set "
                                    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file") from e
    bucket = path(f"gs://{_bucket(p)}")
    probe = path(p) / f".write-check-{uuid.uuid4().hex[:12]}"
    try:
        if not bucket.exists():
            raise StorageError(f"{what} {p}: bucket gs://{_bucket(p)} does not exist",
                               hint=f"create it (gcloud storage buckets create gs://{_bucket(p)}) or fix the path")
        probe.write_bytes(b"")
        probe.unlink()
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - gcsfs and google-auth raise many types; all mean "cannot write here"
        raise StorageError(f"{what} {p} cannot be written ({type(e).__name__}: {one_line(str(e), 300)})") from e


def walk(top: str | os.PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top)` for a local or bucket `top`: (folder, subfolders, files), each folder named from `top`.

    epath's walk names a bucket's folders without their "gs://" (gcsfs strips it), so each is named by
    its path relative to the first one the walk yields, `top` itself. Pruning `subfolders` in place
    skips them, as with `os.walk`.
    """
    top, start = os.fspath(top), None
    for root, dirs, files in path(top).walk():
        start = start or os.fspath(root)
        relative = os.path.relpath(os.fspath(root), start)
        yield (top if relative == "." else os.path.join(top, relative)), dirs, files


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves a file or folder: `os.rename` locally; copy then delete on a bucket (no rename there)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src):
        os.rename(src, dst)
        return
    configure()
    import fsspec

    fs = fsspec.filesystem("gs")
    fs.copy(src, dst, recursive=fs.isdir(src))
    fs.rm(src, recursive=True)


def rmtree(p: str | os.PathLike) -> None:
    """Removes a folder and everything under it; nothing when it does not exist."""
    path(p).rmtree(missing_ok=True)
