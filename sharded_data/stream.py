"""The streaming train loader: a WebDataset stage list over a split's shards, for one rank and one epoch.

      shard list (seeded, epoch-dependent order, the same on every rank, repeated in passes)
      -> split by rank (explicit rank / world_size) -> split by worker
      -> tarfile_to_samples(handler=our counting handler) -> count samples per shard against the index
      -> sample shuffle buffer (seeded)
      -> decode + check against the index + transform -> batch + count

Every rank yields exactly floor(N / (world_size * batch_size)) batches (ZeRO-3 hangs when ranks disagree):
each worker takes its share of that count and cycles over its shards until it has it. With fewer shards than
ranks x workers (tiny corpora), every worker reads all shards and keeps every (ranks x workers)-th sample
instead, so no worker is ever empty. Missing or short shards are an error when the loader is made, before
anything is read; a shard that yields fewer samples than its index entry (a tar damaged in place ends early,
and tarfile stops at a garbage header without an error) has the missing ones counted as skipped.
"""
from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader

from sharded_data.bad_samples import (
    TAR_READ_ERROR,
    SampleError,
    SkippedSample,
    SkipStats,
    TarErrorHandler,
    TooManyBadSamples,
    check_bad_fraction,
    log_skip,
)
from sharded_data.decode import decode_raw_sample
from sharded_data.format import ShardIndex, load_index, verify_shard_files
from sharded_data.loader import STATS_KEY, VideoLoader, check_rank, dataloader_kwargs, derive_seed, worker_id_and_count
from sharded_data.reader_config import ReaderConfig
from sharded_data.transforms import VideoSample, VideoTransform, collate_videos


class TrainStream(torch.utils.data.IterableDataset):
    """One rank's training samples for one epoch: passes over its part of the shards, without end.

    Each pass is the explicit WebDataset stage list below. The shard order depends on (seed, epoch,
    pass) only, so it is identical on every rank and worker, which makes the rank and worker splits
    disjoint and complete within a pass. The shuffle buffer is flushed at the end of each pass, so
    one pass is one permutation of the worker's samples. The batching stage after this one stops
    after the worker's share of batches; a pass that read no sample at all raises instead of looping.
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, epoch: int, cfg: ReaderConfig, stats: SkipStats,
                 index: ShardIndex | None = None):
        self.urls, self.rank, self.world_size, self.epoch, self.cfg, self.stats = urls, rank, world_size, epoch, cfg, stats
        self.index = index
        # Samples each shard must yield, by url (the index lists them per shard).
        self.expected = {url: info.num_samples for url, info in zip(urls, index.shards)} if index is not None else {}
        self.transform = VideoTransform.from_config(cfg, train=True)
        # Fewer shards than ranks x workers (tiny corpora): split samples instead, so no worker is empty.
        self.split_shards = len(urls) >= world_size * max(1, cfg.num_workers)

    def one_pass(self, pass_number: int, progress: PassProgress, rng: random.Random) -> wds.DataPipeline:
        order = list(self.urls)
        random.Random(derive_seed(self.cfg.seed, self.epoch, pass_number)).shuffle(order)
        stages: list = [wds.SimpleShardList(order)]
        if self.split_shards:
            stages += [SplitByRank(self.rank, self.world_size), wds.split_by_worker]
        # Each shard's shortfall is counted once: by the worker reading it, or (every worker reads every shard
        # when samples are split) by the first worker of rank 0.
        counts_missing = self.split_shards or (self.rank == 0 and worker_id_and_count()[0] == 0)
        stages += [wds.tarfile_to_samples(handler=TarErrorHandler(self.stats)),
                   CountShardSamples(progress, self.expected, self.stats if counts_missing else None)]
        if not self.split_shards:
            stages += [SplitSamplesByRankAndWorker(self.rank, self.world_size)]
        worker, _ = worker_id_and_count()
        shuffle_rng = random.Random(derive_seed(self.cfg.seed, self.epoch, self.rank, worker, pass_number))
        stages += [
            wds.shuffle(self.cfg.shuffle_buffer, self.cfg.shuffle_initial, rng=shuffle_rng),
            DecodeAndTransform(self.transform, self.stats, rng, self.index, self.cfg.max_decoded_bytes),
        ]
        return wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[VideoSample]:
        worker, _ = worker_id_and_count()
        augment_rng = random.Random(derive_seed(self.cfg.seed, self.epoch, self.rank, worker, -1))
        for pass_number in itertools.count():
            progress = PassProgress()
            yield from self.one_pass(pass_number, progress, augment_rng)
            if progress.raw_samples == 0:
                raise TooManyBadSamples(
                    f"{Path(self.urls[0]).parent}: a whole pass over this worker's shards read no sample; the "
                    f"shards are unreadable (check them with `python -m sharded_data.inspect DIR --check`)"
                )


@dataclass
class PassProgress:
    """Raw samples read in the current pass."""

    raw_samples: int = 0


class CountShardSamples:
    """Count raw samples (for the pass) and, per shard, compare with the index: the shortfall of a shard that
    ended early is recorded as skipped tar reads (`stats`; None = another worker records it)."""

    def __init__(self, progress: PassProgress, expected: dict[str, int], stats: SkipStats | None):
        self.progress, self.expected, self.stats = progress, expected, stats

    def __call__(self, source: Iterable[dict]) -> Iterator[dict]:
        url, count = None, 0
        for raw in source:
            self.progress.raw_samples += 1
            if raw.get("__url__") != url:
                self._shortfall(url, count)
                url, count = raw.get("__url__"), 0
            count += 1
            yield raw
        self._shortfall(url, count)

    def _shortfall(self, url: str | None, count: int) -> None:
        missing = self.expected.get(url, 0) - count
        if url is None or self.stats is None or missing <= 0:
            return
        self.stats.seen += missing
        for _ in range(missing):
            self.stats.record_skip(TAR_READ_ERROR)
        log_skip(SkippedSample(url, "(rest of shard)", TAR_READ_ERROR,
                               f"the shard ended after {count} of its {self.expected[url]} indexed samples"))


class SplitByRank:
    """webdataset's split_by_node, with rank and world size given explicitly rather than read from the env."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, source: Iterable) -> Iterator:
        return itertools.islice(source, self.rank, None, self.world_size)


class SplitSamplesByRankAndWorker:
    """Every worker reads every shard and keeps every (ranks x workers)-th sample."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, source: Iterable) -> Iterator:
        worker, num_workers = worker_id_and_count()
        slot = self.rank + self.world_size * worker
        return itertools.islice(source, slot, None, self.world_size * num_workers)


class DecodeAndTransform:
    """Raw sample -> VideoSample; a bad sample is logged once, counted and left out."""

    def __init__(self, transform: VideoTransform, stats: SkipStats, rng: random.Random, index: ShardIndex | None,
                 max_decoded_bytes: int):
        self.transform, self.stats, self.rng, self.index = transform, stats, rng, index
        self.max_decoded_bytes = max_decoded_bytes

    def __call__(self, source: Iterable[dict]) -> Iterator[VideoSample]:
        for raw in source:
            self.stats.seen += 1
            try:
                decoded = decode_raw_sample(raw, self.index, self.max_decoded_bytes)
            except SampleError as error:
                self.stats.record_skip(error.cause)
                log_skip(SkippedSample(raw.get("__url__", "?"), raw.get("__key__", "?"), error.cause, error.detail))
                continue
            frames = self.transform(decoded.frames, self.rng)
            yield VideoSample(frames, decoded.text, decoded.meta.sample_id, decoded.meta.sentence_id, decoded.key)


class BatchWorkerShare:
    """Collate batches until this worker has made its share of the rank's batch count; attach skip counts.

    The bad-fraction limit is also checked here, on this worker's own counts, so a worker whose shards
    are all bad stops the run instead of cycling over them forever.
    """

    def __init__(self, batch_size: int, batches_per_rank: int, stats: SkipStats, cfg: ReaderConfig, data_dir: str):
        self.batch_size, self.batches_per_rank, self.stats = batch_size, batches_per_rank, stats
        self.cfg, self.data_dir = cfg, data_dir

    def __call__(self, source: Iterable[VideoSample]) -> Iterator[dict]:
        worker, num_workers = worker_id_and_count()
        share = self.batches_per_rank // num_workers + (worker < self.batches_per_rank % num_workers)
        worker_total = SkipStats()
        pending: list[VideoSample] = []
        made = 0
        if share == 0:
            return
        for sample in source:
            pending.append(sample)
            if len(pending) < self.batch_size:
                continue
            batch = collate_videos(pending, normalize=self.cfg.normalize)
            pending = []
            batch[STATS_KEY] = self.stats.take()
            worker_total.add(batch[STATS_KEY])
            check_bad_fraction(worker_total, self.cfg.bad_fraction_limit, self.cfg.min_samples_for_limit, self.data_dir)
            yield batch
            made += 1
            if made == share:
                return


def train_batches_per_rank(num_samples: int, batch_size: int, world_size: int) -> int:
    """floor(N / (world_size x batch_size)): the same on every rank, every batch full."""
    return num_samples // (world_size * batch_size)


def make_train_loader(
    shard_dir: str | os.PathLike,
    split: str,
    batch_size: int,
    rank: int,
    world_size: int,
    epoch: int,
    cfg: ReaderConfig,
) -> VideoLoader:
    """The shuffled, augmented stream for one epoch on one rank: exactly len() full batches."""
    check_rank(rank, world_size)
    shard_dir = str(shard_dir)
    index = load_index(shard_dir, split)
    verify_shard_files(shard_dir, index)
    batches = train_batches_per_rank(index.num_samples, batch_size, world_size)
    if batches == 0:
        raise ValueError(
            f"{shard_dir} split {split!r}: {index.num_samples} samples are fewer than one batch per rank "
            f"({world_size} ranks x batch size {batch_size}); lower the batch size or add data"
        )
    stats = SkipStats()
    # Absolute paths: webdataset reads a url's scheme ("pipe:", "http:") before treating it as a file name.
    urls = [os.path.abspath(path) for path in index.shard_paths(shard_dir)]
    stream = TrainStream(urls, rank, world_size, epoch, cfg, stats, index)
    pipeline = wds.DataPipeline(stream, BatchWorkerShare(batch_size, batches, stats, cfg, shard_dir))
    loader = DataLoader(pipeline, batch_size=None, **dataloader_kwargs(cfg))
    return VideoLoader(loader, batches, shard_dir, cfg, world_size=world_size)
