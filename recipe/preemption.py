"""Graceful preemption: a signal asks the run to checkpoint and exit so SLURM can requeue it.

SLURM (``--signal=USR1@120``, ``scancel --signal=USR1``) or a cluster's preemption sends SIGUSR1 or
SIGTERM shortly before killing a job. The handler only records that a signal arrived; the training
loop then finishes the step in progress, saves a checkpoint and exits with `REQUEUE_EXIT_CODE`, on
which the SLURM script requeues the job. The requeued job resumes from that checkpoint.

The signal may reach the ranks at different times, or only some of them (srun forwards to every
task, the `deepspeed` launcher and `--signal=B:` reach only what they reach). So `should_stop()` is a
collective: every rank calls it once per optimizer step and all ranks get the same answer (a MAX
all-reduce of the local flags); they then stop on the same step and save the same checkpoint.

    stopper = PreemptionHandler()                  # installs the handlers (main thread)
    for step in range(start, max_steps):
        ... one optimizer step ...
        if stopper.should_stop():                  # every rank, every step
            ckpt.save(engine, step, client_state)
            raise SystemExit(REQUEUE_EXIT_CODE)
    stopper.uninstall()

Under the `deepspeed` launcher, note that the launcher itself kills its workers on SIGTERM:
signal the worker processes (SIGUSR1), not the launcher.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Iterable

import torch
import torch.distributed as dist

from recipe.dist import host_group

logger = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 3
"""Exit status meaning "checkpointed after a preemption signal; requeue me"."""

DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    """Turns SIGUSR1/SIGTERM into a flag that all ranks agree on once per step."""

    def __init__(self, signals: Iterable[signal.Signals] = DEFAULT_SIGNALS,
                 device: torch.device | str | None = None) -> None:
        """Install the handlers. By default the flag is a CPU tensor all-reduced over the gloo host group
        (`recipe.dist.host_group`): a flag on the GPU would make every step wait, at `.item()`, for all of
        that step's GPU work. `device` puts the flag on that device and all-reduces it over the default
        group instead (it must be one that group's backend accepts)."""
        self.signals = tuple(signals)
        self._device = device
        self._received: signal.Signals | None = None
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.signals}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: a signal handler may run in the middle of any Python code.
        self._received = signal.Signals(signum)

    @property
    def received_signal(self) -> signal.Signals | None:
        """The signal this process received, if any (local; other ranks may differ)."""
        return self._received

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank received a signal. Collective: call it on all
        ranks at the same point of every step."""
        local = self._received is not None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            stop = local
        else:
            flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=self._device or "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=None if self._device else host_group())
            stop = bool(flag.item())
        if stop:
            origin = self._received.name if local else "another rank"
            logger.warning("Preemption signal received (%s): checkpointing and exiting with code %d",
                           origin, REQUEUE_EXIT_CODE)
        return stop

    def uninstall(self) -> None:
        """Put back the handlers that were installed before this one."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __enter__(self) -> "PreemptionHandler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
