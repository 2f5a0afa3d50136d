"""Orbax checkpoints of the trainable tree, optimizer state, step and run metadata (never CLIP).

Layout: `WORKDIR/checkpoints/<step>/{state,meta}`. Saves are asynchronous and
atomic (Orbax writes to a temporary directory and renames it when complete),
so a run killed at any moment leaves only complete checkpoints behind; the
latest `keep` are preserved.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored."""


class Checkpointer:
    """A thin wrapper of `ocp.CheckpointManager` for `(TrainState, metadata)` pairs.

    Attributes:
      directory: where step directories live.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving `state` (a pytree of arrays) and `meta` (JSON) as `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores `(state, meta)` of `step` (default: the latest) into the structure of `abstract_state`.

        Raises:
          CheckpointError: naming the checkpoint directory, when files are
            missing, truncated or do not match the expected structure.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
            )
        except Exception as e:  # Orbax/TensorStore raise many types for damaged files
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored ({type(e).__name__}: {e}). "
                "It was left untouched; move it away to start from the previous one or from scratch."
            ) from e
        logging.info("restored checkpoint step %d from %s", step, self.directory)
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
