"""Each epoch's global batches, planned ahead on rank 0 and handed to every rank: the sampler never stalls a GPU.

Planning a Pair Selection epoch is CPU work that grows with N (greedy batches over N / B global batches:
~1.6 CPU s at N = 18,401 with a pool of 512), and a large run on 8 GPUs may train such an epoch in seconds.
So `EpochPlanner`:

* plans on rank 0 only, in one background thread: while epoch e trains, epoch e + 1 is planned (the heavy
  parts are numpy and torch calls that release the GIL). The other ranks do no planning work at all;
* hands the plan to every rank by a broadcast at the start of each epoch, on the main thread (collectives
  never run in the background thread, so they cannot interleave with the training's). Every rank therefore
  trains on exactly the same plan, whatever its floating-point environment;
* stays a pure function of (seed, epoch): a resumed run re-plans its epoch and gets the same batches.

The first epoch of a run (or of a resume), and an epoch the planner could not see coming (`can_plan_ahead`:
the first Pair Selection epoch of `--reference-run self`, whose trajectory is written at the end of the
epoch before), are planned on the spot; `last_wait_s` says how long rank 0 waited for its plan.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch.distributed as dist

from recipe.dist import broadcast_object
from recipe.pair_selection import rank_slice

Plan = list[list[int]]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EpochPlanner:
    """The sampler interface the training loop uses (`len`, `epoch_batches`, `rank_slice`), planned ahead."""

    rank_slice = staticmethod(rank_slice)

    def __init__(
        self,
        plan_epoch: Callable[[int], Plan],
        num_batches: int,
        num_epochs: int,
        can_plan_ahead: Callable[[int], bool] = lambda epoch: True,
        background: bool = True,
    ) -> None:
        self.plan_epoch = plan_epoch
        self.num_batches = num_batches
        self.num_epochs = num_epochs
        self.can_plan_ahead = can_plan_ahead
        self.last_wait_s = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-planner") if background else None
        self._ahead: tuple[int, Future] | None = None
        self._current: tuple[int, Plan] | None = None

    def __len__(self) -> int:
        return self.num_batches

    def _plan_now(self, epoch: int) -> Plan:
        if self._executor is None:
            return self.plan_epoch(epoch)
        if self._ahead is not None and self._ahead[0] == epoch:
            future = self._ahead[1]
        else:  # through the executor all the same: one planning at a time, never two threads in one sampler
            future = self._executor.submit(self.plan_epoch, epoch)
        self._ahead = None
        return future.result()

    def _start_ahead(self, epoch: int) -> None:
        if self._executor is None or epoch >= self.num_epochs or not self.can_plan_ahead(epoch):
            return
        self._ahead = (epoch, self._executor.submit(self.plan_epoch, epoch))

    def epoch_batches(self, epoch: int) -> Plan:
        """Collective: every rank calls it at the start of the epoch and gets rank 0's plan of `epoch`."""
        if self._current is not None and self._current[0] == epoch:
            return self._current[1]
        plan = None
        if not _distributed() or dist.get_rank() == 0:
            started = time.perf_counter()
            plan = self._plan_now(epoch)
            self.last_wait_s = time.perf_counter() - started
            if len(plan) != self.num_batches:
                raise RuntimeError(f"epoch {epoch} was planned with {len(plan)} batches, {self.num_batches} expected")
            self._start_ahead(epoch + 1)
        plan = broadcast_object(plan)
        self._current = (epoch, plan)
        return plan

    def close(self) -> None:
        """Stop planning ahead (a plan in progress finishes; nothing waits for it)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
