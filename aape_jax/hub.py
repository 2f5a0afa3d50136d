"""Local directories for Hugging Face format checkpoints given as a path or a hub id."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

# "owner/name", or a one-part legacy id the hub still serves ("gpt2", "gpt2-medium").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve(path_or_id: str | os.PathLike, what: str, files: str,
            allow_patterns: Sequence[str] | None = None) -> str:
    """A local directory for `path_or_id`, downloading a hub id with huggingface_hub when online.

    Args:
      path_or_id: a local directory, or an "owner/name" (or legacy one-part) hub id.
      what: what is being loaded, for errors ("CLIP checkpoint").
      files: the files such a directory holds, for the offline error.
      allow_patterns: the files to download (all by default).

    Raises:
      FileNotFoundError: the path is missing and is no hub id, or the download
        failed (offline, unknown repository), saying what to pass instead.
      NotADirectoryError: the path is a file.
    """
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path} is a file; pass the {what} directory that holds config.json")
    if not _HUB_ID.match(path) or path.startswith("."):
        raise FileNotFoundError(f"{what} directory {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=allow_patterns)
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(
            f"{path} is not a local directory, and downloading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}). Offline, pass the path of a local Hugging Face format {what} "
            f"directory instead ({files}), e.g. one made with `huggingface-cli download {path} "
            "--local-dir DIR` on a machine that is online."
        ) from e
