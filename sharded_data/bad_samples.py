"""Bad input while reading: skip the sample, log it once, count it, and stop the run when too much is bad.

A corrupt sample must never kill a run and never pass silently. Every reader in this package
(streaming shards, indexed shards, per-frame PNG directories) reports a skipped sample as a
`SkippedSample` (where, key, cause, detail). Counts travel with the batches out of the DataLoader
workers as a plain `SkipStats` dict, so the training loop reads one aggregated `loader.stats`
({seen, skipped, by_cause}) whatever the number of workers. Above `bad_fraction_limit` (after
`min_samples` seen) the loader raises `TooManyBadSamples`, naming the data directory.

WebDataset's own `warn_and_continue` sleeps 0.5 s per error and its DecodingError prints empty, so
the tar-level handler is ours too (`TarErrorHandler`).

Several ranks decide together (`RankAgreement`): each rank counts its own samples, but the limit is checked on
the sum over ranks, at the same batch on every rank, so all of them stop on the same batch. A rank that stopped
alone would leave the others waiting in their next collective (a hang, not an error).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger("sharded_data")

# The causes a reader can report (the keys of `by_cause`).
TAR_READ_ERROR = "tar_read_error"  # truncated or corrupt tar: the rest of that shard is lost
MISSING_VIDEO = "missing_video"
EMPTY_VIDEO = "empty_video"  # a zero-byte video member
VIDEO_DECODE_ERROR = "video_decode_error"  # garbage bytes, unknown codec, bad npy header
ZERO_FRAMES = "zero_frames"
MISSING_TEXT = "missing_text"  # no txt member, or an empty / whitespace-only sentence
TEXT_ENCODING_ERROR = "text_encoding_error"  # txt member is not UTF-8
BAD_META = "bad_meta"  # json member missing, unreadable, of the wrong types, or disagreeing with the index
VIDEO_TOO_LARGE = "video_too_large"  # would decode to more than the decode limit (refused before allocating)
IMAGE_READ_ERROR = "image_read_error"  # an unreadable frame image (PNG loader)


class SampleError(Exception):
    """Raised while decoding one sample; `cause` is one of the constants above."""

    def __init__(self, cause: str, detail: str):
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of samples could not be read: the data is broken, not unlucky."""


@dataclass
class SkippedSample:
    """Stands in for a sample that could not be read; the collate counts it and leaves it out."""

    where: str  # shard path or frame directory
    key: str
    cause: str
    detail: str


@dataclass
class SkipStats:
    """Counts of samples seen and skipped; adds up across workers and batches."""

    seen: int = 0
    skipped: int = 0
    by_cause: Counter = field(default_factory=Counter)

    def add(self, other: "SkipStats | dict") -> None:
        if isinstance(other, dict):
            other = SkipStats.from_dict(other)
        self.seen += other.seen
        self.skipped += other.skipped
        self.by_cause.update(other.by_cause)

    def record_skip(self, cause: str) -> None:
        self.skipped += 1
        self.by_cause[cause] += 1

    def take(self) -> dict:
        """The counts since the last take, as a picklable dict; resets this counter."""
        out = self.to_dict()
        self.seen, self.skipped, self.by_cause = 0, 0, Counter()
        return out

    def to_dict(self) -> dict:
        return {"seen": self.seen, "skipped": self.skipped, "by_cause": dict(self.by_cause)}

    @classmethod
    def from_dict(cls, data: dict) -> "SkipStats":
        return cls(int(data["seen"]), int(data["skipped"]), Counter(data.get("by_cause", {})))

    @property
    def bad_fraction(self) -> float:
        return self.skipped / self.seen if self.seen else 0.0


_already_logged: set[tuple[str, str, str]] = set()


def log_skip(skipped: SkippedSample) -> None:
    """Log a skipped sample once per process (a bad sample seen again in a later pass stays quiet)."""
    ident = (skipped.where, skipped.key, skipped.cause)
    if ident in _already_logged:
        return
    _already_logged.add(ident)
    logger.warning("skipped sample %s in %s (%s): %s", skipped.key, skipped.where, skipped.cause, skipped.detail)


def check_every_sample_read(stats: SkipStats, data_dir: str | os.PathLike) -> None:
    """Evaluation scores every sample or none: raise TooManyBadSamples at the first one that could not be read."""
    if stats.skipped:
        causes = ", ".join(f"{cause}: {count}" for cause, count in sorted(stats.by_cause.items()))
        raise TooManyBadSamples(
            f"{data_dir}: {stats.skipped} sample(s) could not be read ({causes}; the warnings above name them), and "
            f"an evaluation must cover every sample (a score on a subset is not comparable). Check the split with "
            f"`python -m sharded_data.inspect {data_dir} --check` and rewrite the damaged shards."
        )


def check_bad_fraction(stats: SkipStats, limit: float, min_samples: int, data_dir: str | os.PathLike) -> None:
    """Raise TooManyBadSamples when more than `limit` of at least `min_samples` seen samples were skipped."""
    if stats.seen >= min_samples and stats.bad_fraction > limit:
        causes = ", ".join(f"{cause}: {count}" for cause, count in sorted(stats.by_cause.items()))
        raise TooManyBadSamples(
            f"{data_dir}: {stats.skipped} of {stats.seen} samples could not be read "
            f"({stats.bad_fraction:.1%} > limit {limit:.1%}; {causes}). The data is damaged: check it with "
            f"`python -m sharded_data.inspect {data_dir} --check` and rewrite the bad shards, or raise "
            f"ReaderConfig.bad_fraction_limit if this much loss is acceptable."
        )


class TarErrorHandler:
    """A WebDataset `handler=`: count and log a tar-level error once, then continue with the next shard.

    WebDataset appends the shard url (and the stream) to the exception's args before calling the
    handler; a truncated tar loses the rest of its shard, counted here as one skipped read.
    """

    def __init__(self, stats: SkipStats):
        self.stats = stats

    def __call__(self, error: Exception) -> bool:
        where = next((arg for arg in reversed(error.args) if isinstance(arg, str) and ".tar" in arg), "?")
        message = str(error.args[0]) if error.args else type(error).__name__
        self.stats.seen += 1
        self.stats.record_skip(TAR_READ_ERROR)
        log_skip(SkippedSample(where, "(rest of shard)", TAR_READ_ERROR, f"{type(error).__name__}: {message}"))
        return True


class RankAgreement:
    """One small all-reduce per batch so that every rank of a job sees the same bad-sample totals and stops
    (limit reached, a rank failed, batch counts differ) on the same batch.

    The counts travel over a gloo group (the default group on CPU; on GPU a gloo group made once, so this
    never waits on the GPU's stream). Only for loaders that every rank iterates in lock-step.
    """

    _cpu_groups: dict = {}

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    @classmethod
    def for_job(cls, world_size: int | None = None) -> "RankAgreement | None":
        """An agreement over the default process group, or None when there is none (or it has one rank, or
        the loader was built for another `world_size` than the group's)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        if world_size is not None and world_size != dist.get_world_size():
            return None
        return cls(dist.get_world_size())

    def _group(self):
        import torch.distributed as dist

        if dist.get_backend() == "gloo":
            return None  # the default group
        key = id(dist.group.WORLD)
        if key not in self._cpu_groups:
            self._cpu_groups[key] = dist.new_group(backend="gloo")  # collective: every rank gets here together
        return self._cpu_groups[key]

    def combine(self, stats: SkipStats, failed: bool = False, finished: bool = False) -> tuple[SkipStats, int, int]:
        """(totals over ranks, ranks that failed, ranks that finished). Collective: every rank calls it."""
        import torch
        import torch.distributed as dist

        values = torch.tensor([stats.seen, stats.skipped, int(failed), int(finished)], dtype=torch.int64)
        dist.all_reduce(values, group=self._group())
        seen, skipped, failures, finishes = values.tolist()
        return SkipStats(seen, skipped, Counter(stats.by_cause)), failures, finishes
