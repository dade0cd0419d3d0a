"""Shards -> batches: the readers of a split of a shard directory, in one place to import them from.

Three ways to read a split, all producing the contract's Batch dict and all decoding + transforming inside the
DataLoader workers (tensors, not numpy, cross the worker pipe):

- `make_train_loader` (stream.py): a WebDataset stream as an explicit stage list, shuffled, split by rank and
  by worker; every rank yields exactly floor(N / (world_size * batch_size)) full batches.
- `IndexedShardReader.get(sample_id)` and `make_indexed_loader` (indexed.py): random access through the index,
  driven by a batch sampler of sample ids (the Pair Selection curriculum sampler; the training loop).
- `make_eval_loader` (indexed.py): every sample exactly once across ranks, equal padded batch counts, and an
  error rather than a skip when a sample cannot be read.

How a sample is decoded and checked: decode.py. How videos become frames of a batch: transforms.py, with the
settings of reader_config.py. Bad samples (skipped, logged once, counted, a limit that stops the run on every
rank together): bad_samples.py, loader.py.
"""
from __future__ import annotations

from sharded_data.decode import DecodedSample, decode_raw_sample
from sharded_data.indexed import (
    EntryBatches,
    IndexedCollate,
    IndexedShardReader,
    IndexedVideoDataset,
    eval_sample_ids,
    make_eval_loader,
    make_indexed_loader,
)
from sharded_data.loader import STATS_KEY, VideoLoader, dataloader_kwargs, derive_seed
from sharded_data.reader_config import OUTPUTS, ReaderConfig
from sharded_data.stream import TrainStream, make_train_loader, train_batches_per_rank

__all__ = [
    "DecodedSample", "EntryBatches", "IndexedCollate", "IndexedShardReader", "IndexedVideoDataset", "OUTPUTS",
    "ReaderConfig", "STATS_KEY", "TrainStream", "VideoLoader", "dataloader_kwargs", "decode_raw_sample",
    "derive_seed", "eval_sample_ids", "make_eval_loader", "make_indexed_loader", "make_train_loader",
    "train_batches_per_rank",
]
