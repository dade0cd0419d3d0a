"""What every reader of this package hands to the training loop: a `VideoLoader` around a torch DataLoader.

It yields Batch dicts, has `len()` = batches on this rank, and aggregates the bad-sample counts that ride along
each batch out of the workers (`stats`). It stops the run when too much is bad (or, for evaluation, when any
sample is bad), on every rank at the same batch (bad_samples.RankAgreement), and fails loudly when a rank yields
another number of batches than promised (ZeRO-3 collectives hang on unequal counts).
"""
from __future__ import annotations

import random
from typing import Iterator

from torch.utils.data import DataLoader, get_worker_info

from sharded_data.bad_samples import (
    RankAgreement,
    SkipStats,
    TooManyBadSamples,
    check_bad_fraction,
    check_every_sample_read,
)
from sharded_data.reader_config import ReaderConfig

STATS_KEY = "_skip_stats"  # rides along each batch out of the worker; the loader pops it


def worker_id_and_count() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def derive_seed(*parts: int) -> int:
    """One seed per combination of (seed, epoch, rank, worker, ...); stable across Python runs."""
    return int.from_bytes(random.Random(repr(tuple(int(part) for part in parts))).randbytes(8), "little")


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


def dataloader_kwargs(cfg: ReaderConfig) -> dict:
    kwargs = {"num_workers": cfg.num_workers, "pin_memory": cfg.pin_memory}
    if cfg.num_workers > 0:
        kwargs["prefetch_factor"] = cfg.prefetch_factor
    return kwargs


class VideoLoader:
    """What the training loop iterates: batches (Batch dicts), `len()` = batches on this rank, `stats`.

    `world_size`: the ranks the loader was built for; when a process group of that size exists, the ranks
    agree on the bad-sample decisions at every batch (collective: iterate it on every rank, in step).
    `require_every_sample`: any unreadable sample is an error (evaluation), not a skip.
    """

    def __init__(self, dataloader: DataLoader, num_batches: int | None, data_dir: str, cfg: ReaderConfig,
                 world_size: int | None = None, require_every_sample: bool = False):
        self.dataloader = dataloader
        self.num_batches = num_batches
        self.data_dir = data_dir
        self.cfg = cfg
        self.world_size = world_size
        self.require_every_sample = require_every_sample
        self._stats = SkipStats()

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader's batch sampler has no length")
        return self.num_batches

    @property
    def stats(self) -> dict:
        """{seen, skipped, by_cause} over everything this loader has yielded so far (all workers, this rank)."""
        return self._stats.to_dict()

    def _check(self, totals: SkipStats) -> None:
        if self.require_every_sample:
            check_every_sample_read(totals, self.data_dir)
        else:
            check_bad_fraction(totals, self.cfg.bad_fraction_limit, self.cfg.min_samples_for_limit, self.data_dir)

    def __iter__(self) -> Iterator[dict]:
        agreement = RankAgreement.for_job(self.world_size)
        yielded = 0
        batches = iter(self.dataloader)
        try:
            while True:
                try:
                    batch = next(batches, None)
                except Exception:
                    if agreement is not None:  # tell the other ranks first, or they would wait for us forever
                        agreement.combine(self._stats, failed=True)
                    raise
                if batch is None:
                    break
                self._stats.add(batch.pop(STATS_KEY))
                totals = self._stats
                if agreement is not None:
                    totals, failures, finishes = agreement.combine(self._stats)
                    if failures or finishes:
                        raise TooManyBadSamples(
                            f"{self.data_dir}: another rank stopped reading (it failed or ran out of batches after "
                            f"{yielded}; see its error); stopping this rank with it")
                self._check(totals)
                yielded += 1
                yield batch
            if agreement is not None:
                _, failures, finishes = agreement.combine(self._stats, finished=True)
                if failures or finishes != agreement.world_size:
                    raise RuntimeError(f"{self.data_dir}: this rank's loader ended after {yielded} batches while "
                                       f"another rank's did not (or failed); every rank must yield the same count")
        finally:
            # Stopped early (error, break): stop the workers now. Left to the garbage collector, torch's
            # shutdown waits 5 s per worker (its join times out), seen with torch 2.13.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        if self.num_batches is not None and yielded != self.num_batches:
            # Unequal batch counts across ranks hang ZeRO-3 collectives: fail loudly instead.
            raise RuntimeError(f"{self.data_dir}: yielded {yielded} batches, promised {self.num_batches}")
