"""Orbax checkpoints of the trainable tree, optimizer state, step and run metadata (never CLIP).

Layout: `WORKDIR/checkpoints/<step>/{state,meta}`. Saves are asynchronous and
atomic (Orbax writes to a temporary directory and renames it when complete),
so a run killed at any moment leaves only complete checkpoints behind; the
latest `keep` are preserved.

A step whose files were damaged afterwards (a truncated or garbled file) is
skipped on restore with a warning naming the step and the file; the newest
step that restores is used. The damaged step stays where it is, for
inspection, until this run saves its next checkpoint: then it is renamed to
`<step>.damaged` (Orbax would otherwise skip every save at or below its step).

The workdir may be a bucket folder (``gs://...``): Orbax writes the arrays
through TensorStore's GCS driver and marks a finished step with a
``commit_success.txt`` object instead of a rename (`aape_jax.storage`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from absl import logging

from aape_jax import distributed, storage
from aape_jax.errors import UserError, one_line

DAMAGED_SUFFIX = ".damaged"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint exists but cannot be restored."""

    hint = ("move the damaged step folder(s) away to start from an earlier checkpoint, "
            "or use a new --workdir to start from scratch")


class ParamsMismatchError(CheckpointError):
    """A checkpoint restores, but its trainable tree is not the one the config describes.

    Attributes:
      expected, got: {key: shape} of the tree asked for and of the checkpoint's.
    """

    hint = "restore it with the model config (and CLIP) it was trained with, or use a new --workdir"

    def __init__(self, directory: str, step: int, expected: dict[str, tuple[int, ...]],
                 got: dict[str, tuple[int, ...]]):
        self.expected, self.got = expected, got
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        parts = ([f"missing {missing[:3]}"] if missing else []) + (
            [f"unexpected {unexpected[:3]}"] if unexpected else []) + (
            [f"{k}: {got[k]} in the checkpoint, {expected[k]} expected" for k in shapes[:3]])
        super().__init__(f"checkpoint step {step} in {directory} does not hold the trainable tree of this "
                         f"config ({'; '.join(parts)})")


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"a/b/kernel": shape} of every leaf of a pytree of arrays or shape/dtype structs."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): tuple(x.shape) for path, x in flat}


def _pytree_restore(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore arguments for `abstract`'s leaves (shape, dtype, sharding); `partial`: only those."""
    return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=partial)


# --------------------------------------------------------------------------- diagnosis

_LOCAL_FILE = re.compile(r'local file "([^"]+)"')
_VALUE_SIZE = re.compile(r"not valid for value of size (\d+)")
_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata", "process_0")


def _messages(e: BaseException) -> list[str]:
    out, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return out


def reason(e: BaseException) -> str:
    """A one-line cause of a failed restore: the innermost error, without TensorStore's spec dump."""
    chain = [m for m in _messages(e) if re.search(r"[A-Za-z]{3}", m)]  # not bare numbers or keys
    if not chain:
        return type(e).__name__
    # The innermost message is the most specific; TensorStore appends its whole spec to it.
    message = chain[-1]
    message = re.split(r"\s*\[tensorstore_spec|\s*See full TensorStore details", message)[0]
    return one_line(message, 300)


def damaged_file(step_dir: str, e: BaseException) -> str | None:
    """The file of `step_dir` that most likely broke the restore, or None when it cannot tell."""
    sizes_of = {os.path.join(r, f): storage.path(os.path.join(r, f)).stat().length
                for r, _, fs in storage.walk(step_dir) for f in fs}
    text = "\n".join(_messages(e))
    for path in _LOCAL_FILE.findall(text):
        if os.path.isfile(path) and os.path.abspath(path).startswith(os.path.abspath(step_dir)):
            return path
    sizes = {int(s) for s in _VALUE_SIZE.findall(text)}
    by_size = [f for f, size in sizes_of.items() if size in sizes]
    if len(by_size) == 1:
        return by_size[0]
    for f in sizes_of:  # the JSON metadata files Orbax writes
        if os.path.basename(f) in _JSON_FILES:
            try:
                json.loads(storage.read_text(f))
            except (OSError, ValueError):
                return f
    empty = [f for f, size in sizes_of.items() if size == 0]
    return empty[0] if len(empty) == 1 else None


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Silences what a failed Orbax restore prints besides its exception.

    Its asyncio readers die after the event loop closes, and Python prints each
    one's traceback with TensorStore's full spec (dozens of lines) through
    `sys.unraisablehook` (asyncio's logger is filtered once, below), as well as
    their callbacks' "Event loop is closed"; and a read-only manager warns on
    every load.
    """
    previous = sys.unraisablehook

    def hook(info):
        text = repr(getattr(info, "object", "")) + str(getattr(info, "exc_value", ""))
        dead_loop = isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"
        if dead_loop or "TensorStore" in text or "_read_array_index" in text or "orbax" in text:
            return
        previous(info)

    class DropReadOnly(std_logging.Filter):
        def filter(self, record: std_logging.LogRecord) -> bool:
            return not str(record.msg).startswith(("Given directory is read only",
                                                   "CheckpointManagerOptions.read_only=True"))

    absl_logger = std_logging.getLogger("absl")
    drop = DropReadOnly()
    absl_logger.addFilter(drop)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()  # the dead readers are reported here, still under the hook
        sys.unraisablehook = previous
        absl_logger.removeFilter(drop)


class _DropDeadReaders(std_logging.Filter):
    """asyncio's "Task exception was never retrieved" for an Orbax reader of a damaged file: logged
    whenever the dead task is collected (often after the restore returned), with TensorStore's full spec."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return "tensorstore_spec" not in record.getMessage()


std_logging.getLogger("asyncio").addFilter(_DropDeadReaders())


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """A thin wrapper of `ocp.CheckpointManager` for `(TrainState, metadata)` pairs.

    Attributes:
      directory: where step directories live.
      damaged: {step: why} of the steps a restore skipped.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = storage.absolute(directory)
        if storage.is_remote(self.directory):
            storage.configure()  # before Orbax's first gs:// access
        self.damaged: dict[int, str] = {}
        with _quiet_orbax():
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                    enable_async_checkpointing=async_save and not read_only,
                    create=not read_only,
                    read_only=read_only,
                ),
            )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving `state` (a pytree of arrays) and `meta` (JSON) as `step`, as they are now."""
        self._set_damaged_aside()
        # A copy: the asynchronous save serialises `meta` later (on a bucket, seconds later), by when the
        # caller may have changed it (the trainer appends the next epoch to its history).
        meta = copy.deepcopy(meta)
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
        )
        if not saved:
            logging.warning("checkpoint step %d was not saved: %s already holds step %s", step, self.directory,
                            self._manager.latest_step())

    def _set_damaged_aside(self) -> None:
        """Renames the damaged steps newer than what was restored, so Orbax saves again."""
        if not self.damaged:
            return
        self._manager.wait_until_finished()
        if distributed.is_main_process():
            for step in sorted(self.damaged):
                src = os.path.join(self.directory, str(step))
                if not storage.path(src).is_dir():
                    continue
                dst, n = src + DAMAGED_SUFFIX, 1
                while storage.path(dst).exists():
                    dst, n = f"{src}{DAMAGED_SUFFIX}.{n}", n + 1
                storage.move(src, dst)
                logging.warning("checkpoint step %d (damaged: %s) kept for inspection as %s", step,
                                self.damaged[step], dst)
        distributed.barrier("damaged checkpoints set aside")
        self.damaged = {}
        self._manager.reload()

    def _restore_step(self, step: int, args: Callable[[], Any]) -> Any:
        try:
            with _quiet_orbax():
                return self._manager.restore(step, args=args())
        except Exception as e:  # Orbax/TensorStore raise many types for damaged files
            step_dir = os.path.join(self.directory, str(step))
            bad = damaged_file(step_dir, e)
            where = f"file {bad}" if bad else f"a file under {step_dir}"
            raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be restored: "
                                  f"{where} is damaged or does not fit ({reason(e)})") from e

    def restore_latest_complete(self, args: Callable[[], Any], step: int | None = None) -> tuple[int, Any]:
        """(step, restored items) of `step`, or of the newest step that restores.

        Damaged newer steps are skipped with a warning naming the step and the
        file, recorded in `damaged`, and left in place.

        Raises:
          CheckpointError: no checkpoint, `step` does not restore, or none does.
        """
        if step is not None:
            return step, self._restore_step(step, args)
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}", hint="train first, or check --workdir")
        errors = []
        for candidate in reversed(steps):
            try:
                restored = self._restore_step(candidate, args)
            except CheckpointError as e:
                logging.warning("%s; falling back to the previous checkpoint (the damaged one is left in place)", e)
                errors.append(str(e))
                self.damaged[candidate] = str(e)
                continue
            if errors:
                logging.warning("restored checkpoint step %d from %s after skipping damaged step(s) %s",
                                candidate, self.directory, sorted(self.damaged))
            return candidate, restored
        raise CheckpointError(
            f"none of the {len(steps)} checkpoint(s) in {self.directory} can be restored; newest: {errors[0]}")

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores `(state, meta)` of `step` (default: the newest that restores) into `abstract_state`'s structure.

        Raises:
          CheckpointError: naming the checkpoint directory and the damaged
            file, when files are missing, truncated or do not match the
            expected structure (with `step` None: when no step restores).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        args = lambda: ocp.args.Composite(state=_pytree_restore(abstract), meta=ocp.args.JsonRestore())
        step, restored = self.restore_latest_complete(args, step)
        logging.info("restored checkpoint step %d from %s", step, self.directory)
        return restored["state"], restored["meta"]

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """(step, trainable tree, meta) of `step` (default: the newest that restores): of the saved state
        only `params` are read (no optimizer state, so no optimizer configuration is needed).

        Raises:
          ParamsMismatchError: the checkpoint's tree differs from `abstract_params`
            (a pytree of arrays or shape/dtype structs), naming the directory, the
            step and the keys.
          CheckpointError: as `restore`.
        """
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
        args = lambda: ocp.args.Composite(state=_pytree_restore(abstract, partial=True), meta=ocp.args.JsonRestore())
        step, restored = self.restore_latest_complete(args, step)
        params = restored["state"]["params"]
        # The saved tree's own shapes: a partial restore leaves keys it does not find as placeholders
        # and does not read keys nobody asked for, so only the metadata shows both.
        saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / "state")
        expected, got = tree_shapes(abstract_params), tree_shapes(saved.tree["params"])
        if expected != got:
            raise ParamsMismatchError(self.directory, step, expected, got)
        logging.info("restored the trainable tree of checkpoint step %d from %s", step, self.directory)
        return step, params, restored["meta"]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def checkpoints_dir(workdir: str | os.PathLike) -> str:
    """WORKDIR/checkpoints; a `CheckpointError` when it does not exist (checked before slow work)."""
    directory = os.path.join(storage.absolute(workdir), "checkpoints")
    if not storage.path(directory).is_dir():
        raise CheckpointError(f"no checkpoint in {directory}", hint="train first, or check the workdir")
    return directory


def restore_trainable(workdir: str | os.PathLike, abstract_params: Any) -> tuple[Any, dict]:
    """(trainable tree, meta) of the newest restorable checkpoint of a training workdir: the one restore path
    of `config.init`, evaluation without training, retrieval fine-tuning and inference.

    Raises:
      CheckpointError: the workdir has no checkpoint, none restores, or (`ParamsMismatchError`) the tree
        differs from `abstract_params`; each names the directory, the step and the keys.
    """
    ckpt = Checkpointer(checkpoints_dir(workdir), read_only=True)
    try:
        _, params, meta = ckpt.restore_params(abstract_params)
    finally:
        ckpt.close()
    return params, meta
