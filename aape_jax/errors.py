"""The project's error type for user mistakes, and how the command-line tools report it.

`UserError` marks an error in what the user gave (a config value, a file, an
argument, a damaged checkpoint) rather than a bug: the command-line tools
(`aape_jax.main`, `aape_jax.zeroshot`, `python -m aape_jax.prompts`,
`aape_jax.results`, `launch/sweep.py`) print its message and hint in one or
two lines and exit with `USER_ERROR_EXIT_CODE`; the traceback goes to a log
file or, with `--verbose`, to stderr. Each concrete error also derives from the
built-in type it used to be (`ValueError`, `FileNotFoundError`, ...), so code
catching those keeps working.

A full disk (ENOSPC) anywhere in an exception's chain is reported the same
way, as "No space left on device" with the path, however the library that hit
it wrapped it; so are a missing file or folder and a permission error (their
message names the path).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import IO, Any

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error in the user's input; `str()` is the message, `.hint` what to do about it.

    Attributes:
      hint: one sentence on how to fix it ("" when the message says it all).
    """

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(UserError, ValueError):
    """A config value that cannot work (named in the message)."""


class DataError(UserError, FileNotFoundError):
    """A dataset file or folder the layout needs is missing."""


class PromptFileError(UserError, ValueError):
    """A prompt file (CuPL JSON, captions) that cannot be used."""


class BadImageError(UserError, ValueError):
    """An image that cannot be decoded; `.path` names it."""

    def __init__(self, path: str, reason: str, hint: str | None = None):
        super().__init__(f"cannot decode image {path}: {reason}", hint)
        self.path = path
        self.reason = reason


class NoSpaceError(UserError, OSError):
    """The disk is full (ENOSPC) while writing `.filename`."""

    hint = "free some space (or point the feature store / workdir elsewhere) and rerun the same command"

    def __init__(self, path: str | os.PathLike | None):
        path = None if path is None else os.fspath(path)
        super().__init__(f"No space left on device while writing {path}" if path else "No space left on device")
        self.errno = errno.ENOSPC
        self.filename = path

    def __str__(self) -> str:  # OSError's would be "[Errno 28] None: 'path'"
        return str(self.args[0])


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and the exceptions it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    while e is not None and not any(e is s for s in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


_NO_SPACE_TEXT = ("No space left on device", "[Errno 28]")
_QUOTED_PATH = re.compile(r"""["'](/[^"']+)["']""")


def no_space(e: BaseException) -> BaseException | None:
    """The ENOSPC error in `e`'s chain, if any (libraries often wrap or mask it).

    An `OSError` with errno ENOSPC, or an exception whose message says so
    (TensorStore and Orbax's background writers re-raise it as text).
    """
    chain = _chain(e)
    return (next((x for x in chain if isinstance(x, OSError) and x.errno == errno.ENOSPC), None)
            or next((x for x in chain if any(t in str(x) for t in _NO_SPACE_TEXT)), None))


def _no_space_path(x: BaseException) -> str | None:
    if isinstance(x, OSError) and (x.filename or x.filename2):
        return os.fspath(x.filename or x.filename2)
    m = _QUOTED_PATH.search(str(x))
    return m.group(1) if m else None


def listing(items: Sequence[Any], quote: bool = True, limit: int = 10) -> str:
    """The first `limit` items of an error's offenders (repr'd, or as they are when they are descriptions
    already) and how many more."""
    shown = ", ".join(repr(x) if quote else str(x) for x in items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def one_line(message: str, limit: int = 500) -> str:
    """The first line of `message`, cut to `limit` characters."""
    line = (message.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(e: BaseException) -> tuple[str, str] | None:
    """(message, hint) for a user error or a full disk; None for anything else (a bug: show the traceback)."""
    full = no_space(e)
    if full is not None:
        full = full if isinstance(full, NoSpaceError) else NoSpaceError(_no_space_path(full))
        return str(full), full.hint
    x: BaseException | None = e
    while x is not None:  # explicit causes only: an error raised while handling a user error is a bug
        if isinstance(x, UserError):
            return one_line(str(x)), x.hint
        x = x.__cause__
    if isinstance(e, (FileNotFoundError, NotADirectoryError, PermissionError)):
        return one_line(str(e)), "check the path"  # a path the user gave (the message names it)
    return None


def append_to_log(path: str | os.PathLike, text: str) -> bool:
    """Appends `text` to `path`, a local or ``gs://`` file; False when it cannot be written."""
    from aape_jax import storage  # not at the top: storage imports this module

    if storage.is_remote(path):
        try:
            try:
                old = storage.read_text(path)
            except FileNotFoundError:
                old = ""
            storage.path(path).write_bytes((old + text).encode("utf-8"))  # an object cannot be appended to
            return True
        except Exception:  # noqa: BLE001 - gcsfs and google-auth raise many types; all mean "not written"
            return False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return True
    except OSError:
        return False


def report(e: BaseException, *, verbose: bool = False, log_file: str | os.PathLike | None = None,
           stream: IO[str] | None = None, prog: str = "error") -> int | None:
    """Prints a user error in one or two lines and returns the exit code; None when `e` is not one.

    The traceback is printed too with `verbose`, else appended to `log_file`
    (when given and writable) and the last line says where it is.
    """
    found = describe(e)
    if found is None:
        return None
    stream = stream or sys.stderr
    message, hint = found
    print(f"{prog}: {message}", file=stream)
    if hint:
        print(f"  hint: {hint}", file=stream)
    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if verbose:
        print(trace, file=stream, end="")
    elif log_file is not None and no_space(e) is None and append_to_log(log_file, trace):
        print(f"  (the full traceback is in {os.fspath(log_file)}; or rerun with --verbose)", file=stream)
    else:
        print("  (rerun with --verbose for the full traceback)", file=stream)
    stream.flush()
    return USER_ERROR_EXIT_CODE
