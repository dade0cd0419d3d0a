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

SIGTERM is also how launchers tear a job down (torchrun and `deepspeed` send it to the surviving
workers when one dies, then SIGKILL), so it is never swallowed: the first SIGTERM asks for a
checkpoint at the next step boundary and starts a grace period (`term_grace_s`); a process still
alive when it ends exits with SIGTERM's status (143), and a second SIGTERM ends it at once.

Signals are not only seen at step boundaries. Where the training state is already on disk (the final
evaluation after the final save, an evaluation right after a periodic save), the loop runs inside
`stopper.checkpointed()`: there a signal exits at once with `REQUEUE_EXIT_CODE`, and the requeued job
resumes from that checkpoint and redoes only the evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Iterable, Iterator

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
                 device: torch.device | str | None = None, term_grace_s: float = 120.0) -> None:
        """Install the handlers. By default the flag is a CPU tensor all-reduced over the gloo host group
        (`recipe.dist.host_group`): a flag on the GPU would make every step wait, at `.item()`, for all of
        that step's GPU work. `device` puts the flag on that device and all-reduces it over the default
        group instead (it must be one that group's backend accepts).
        `term_grace_s`: how long a SIGTERM'd process may go on (to checkpoint) before it exits anyway."""
        self.signals = tuple(signals)
        self._device = device
        self._received: signal.Signals | None = None
        self._state_on_disk = False
        self._term_grace_s = term_grace_s
        self._deadline: threading.Timer | None = None
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.signals}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Mostly set a flag: a signal handler may run in the middle of any Python code.
        received = signal.Signals(signum)
        if received == signal.SIGTERM and self._received == signal.SIGTERM:
            self._terminate_now()  # the second SIGTERM: the sender means it
        self._received = received
        if received == signal.SIGTERM and self._deadline is None:
            self._deadline = threading.Timer(self._term_grace_s, self._grace_over)
            self._deadline.daemon = True
            self._deadline.start()
        if self._state_on_disk:
            logger.warning("%s received while the training state is already checkpointed: exiting with code %d "
                           "to be requeued", received.name, REQUEUE_EXIT_CODE)
            raise SystemExit(REQUEUE_EXIT_CODE)

    def _terminate_now(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _grace_over(self) -> None:
        # A timer thread: it cannot raise into the main thread, which may be blocked in a collective whose
        # peer is gone (the launcher's teardown); leaving is the only way out.
        print(f"preemption: still running {self._term_grace_s:.0f} s after SIGTERM (no checkpoint could be made "
              f"in time, or a peer is gone): exiting", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)

    @contextlib.contextmanager
    def checkpointed(self) -> Iterator[None]:
        """Within the block the training state is on disk: a signal (even one already received) exits at
        once with REQUEUE_EXIT_CODE instead of waiting for a step boundary."""
        if self._received is not None:
            logger.warning("%s received earlier and the training state is checkpointed: exiting with code %d",
                           self._received.name, REQUEUE_EXIT_CODE)
            raise SystemExit(REQUEUE_EXIT_CODE)
        self._state_on_disk = True
        try:
            yield
        finally:
            self._state_on_disk = False

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
        """Put back the handlers that were installed before this one (and stop the SIGTERM grace timer: the
        process leaves on its own from here)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def __enter__(self) -> "PreemptionHandler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
