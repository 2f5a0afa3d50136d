"""Multi-process set-up, the few cross-process agreements the trainer needs, and stop signals.

Every process runs the same program. `initialize` starts
`jax.distributed` from explicit flags, or by auto-detection on Cloud TPU pods
and Slurm; on one process it does nothing. On CPU (tests, loopback runs) the
collectives go through gloo.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# Exit code of a run that saved a checkpoint because it was asked to stop (EX_TEMPFAIL);
# launch scripts rerun the same command, which resumes.
PREEMPTED_EXIT_CODE = 75
# Exit code of a run stopped by Ctrl-C (SIGINT), after its checkpoint: 128 + SIGINT, as a shell
# reports it. Launch scripts do not restart it (the user asked it to stop); the same command resumes.
INTERRUPTED_EXIT_CODE = 130

def _cluster_detected() -> bool:
    """Whether this looks like one process of a multi-process job jax can auto-configure."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm_tasks > 1 or "," in tpu_hosts


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts `jax.distributed` when flags are given or a TPU pod / Slurm job is detected."""
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if not explicit and not _cluster_detected():
        return
    if explicit and None in (coordinator_address, num_processes, process_id):
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id go together "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); "
            "give all three, or none to auto-detect on Cloud TPU / Slurm"
        )
    # CPU computations need a collectives implementation to span processes; it
    # changes nothing for TPU/GPU computations.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
    logging.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches this point (no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a decision all processes must share)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def process_shard(n: int) -> slice:
    """This process's contiguous share of `n` items (shares differ by at most one)."""
    count, index = jax.process_count(), jax.process_index()
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


class PreemptionWatcher:
    """Turns SIGTERM and a first SIGINT (Ctrl-C) into a request to checkpoint at the trainer's next poll.

    Cloud TPU VMs and Slurm (`--signal=TERM@...`) send SIGTERM before they take
    the machine away; every process then agrees (`any_process`) to save the
    same step and exit with `PREEMPTED_EXIT_CODE`. Ctrl-C does the same and
    exits with `INTERRUPTED_EXIT_CODE`; a second Ctrl-C raises
    `KeyboardInterrupt` at once (no further checkpoint; the latest one stays).

    Attributes:
      signum: the first signal received (None before any).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interrupts = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                logging.warning("second Ctrl-C: aborting now, without a checkpoint of the current step")
                raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        hint = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
        logging.warning("received %s: will checkpoint at the next metrics fetch and exit%s",
                        signal.Signals(signum).name, hint)

    def __enter__(self) -> PreemptionWatcher:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal (not agreed across processes)."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """`INTERRUPTED_EXIT_CODE` after a Ctrl-C here, else `PREEMPTED_EXIT_CODE`."""
        return INTERRUPTED_EXIT_CODE if self.signum == signal.SIGINT else PREEMPTED_EXIT_CODE

    @property
    def reason(self) -> str:
        return "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else "preempted"

    def should_stop(self) -> bool:
        """Agreed across processes (a collective on several): call it at points every process reaches."""
        return any_process(self.requested)


class Preempted(SystemExit):
    """Raised after the stop checkpoint is on disk; exits with `code` (`PREEMPTED_EXIT_CODE` or
    `INTERRUPTED_EXIT_CODE`)."""

    def __init__(self, step: int, code: int = PREEMPTED_EXIT_CODE):
        super().__init__(code)
        self.step = step
