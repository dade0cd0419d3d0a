"""Random access to a split by sample id: the indexed reader, its Dataset, and the loaders built on it.

- `IndexedShardReader.get(sample_id)`: one positional read of the sample's bytes (index offset + size of
  its members). `IndexedVideoDataset` is its map-style Dataset with the same transforms as the stream, and
  `make_indexed_loader` drives it from a batch sampler that yields this rank's lists of sample ids (the Pair
  Selection curriculum sampler; the training loop reads its batches this way, so a resumed run sees exactly
  the batches it would have seen).
- `make_eval_loader`: every sample exactly once across ranks (rank-strided ids), padded to the same number of
  equally sized batches on every rank with entries marked valid=False (they repeat a real sample; drop them by
  `valid` or sample id when gathering results). An unreadable sample is an error there, not a skip: an
  evaluation covers every sample or fails.

A shard that is missing or shorter than the index says is an error when the reader is made (before any
compute) and whenever a read finds it so: it is the data directory that is broken, not one sample.
"""
from __future__ import annotations

import io
import os
import random
import re
import tarfile
from typing import Iterable, Iterator

from torch.utils.data import DataLoader, Dataset

from sharded_data.bad_samples import (
    TAR_READ_ERROR,
    SampleError,
    SkippedSample,
    SkipStats,
    TooManyBadSamples,
    log_skip,
)
from sharded_data.decode import decode_raw_sample
from sharded_data.format import (
    DEFAULT_MAX_DECODED_BYTES,
    ShardFilesError,
    ShardIndex,
    load_index,
    sample_key,
    verify_shard_files,
)
from sharded_data.loader import STATS_KEY, VideoLoader, check_rank, dataloader_kwargs, derive_seed
from sharded_data.reader_config import ReaderConfig
from sharded_data.transforms import VideoSample, VideoTransform, collate_videos

_MEMBER_NAME = re.compile(r"^([^/.]+)\.(.+)$")  # the key is everything before the first dot, as in webdataset


class IndexedShardReader:
    """Random access by sample id: one positional read of the sample's bytes (index offset + size).

    File descriptors are opened lazily and kept per process (a DataLoader worker opens its own), and
    read with os.pread, so forked workers never share a file position.
    """

    def __init__(self, shard_dir: str | os.PathLike, split: str, index: ShardIndex | None = None,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES):
        self.shard_dir = str(shard_dir)
        self.split = split
        self.index = index if index is not None else load_index(shard_dir, split)
        verify_shard_files(self.shard_dir, self.index)
        self.paths = self.index.shard_paths(shard_dir)
        self.max_decoded_bytes = max_decoded_bytes
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.index.num_samples

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                os.close(fd)

    def where(self, sample_id: int) -> str:
        return self.paths[self.index.shard[sample_id]]

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # inherited through fork: the parent's descriptors are not ours to use
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            try:
                self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            except OSError as error:  # the shard vanished after the reader checked it: not one bad sample
                raise ShardFilesError(f"{self.paths[shard]}: cannot open an indexed shard ({error}); the data "
                                      f"directory changed under the reader") from None
        return self._fds[shard]

    def read_raw(self, sample_id: int) -> dict:
        """The sample's members as a WebDataset-style dict {__key__, __url__, ext: bytes}; SampleError if unreadable."""
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} is outside 0..{len(self) - 1} of split {self.split!r}")
        key = sample_key(self.split, sample_id)
        offset, size = self.index.offset[sample_id], self.index.size[sample_id]
        fd = self._fd(self.index.shard[sample_id])
        try:
            data = os.pread(fd, size, offset)
        except OSError as error:
            raise SampleError(TAR_READ_ERROR, f"cannot read {size} bytes at {offset}: {error}") from None
        if len(data) != size:
            raise ShardFilesError(f"{self.where(sample_id)}: ends after {len(data)} of the {size} bytes at offset "
                                  f"{offset} that the index gives sample {key}; the shard was truncated after the "
                                  f"reader checked it")
        raw = {"__key__": key, "__url__": self.where(sample_id)}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as members:
                for member in members:
                    match = _MEMBER_NAME.match(member.name)
                    if not member.isreg() or match is None:
                        continue
                    if match.group(1) != key:
                        raise SampleError(TAR_READ_ERROR, f"index points at member {member.name!r}, not {key}")
                    raw[match.group(2).lower()] = members.extractfile(member).read()
        except tarfile.TarError as error:
            raise SampleError(TAR_READ_ERROR, f"tar members unreadable at offset {offset}: {error}") from None
        return raw

    def decode(self, sample_id: int):
        """The sample decoded and checked against the index (a `decode.DecodedSample`); SampleError if bad."""
        return decode_raw_sample(self.read_raw(sample_id), self.index, self.max_decoded_bytes)

    def get(self, sample_id: int) -> dict:
        """{"frames": uint8 tensor [T, H, W, 3], "text": str, "meta": SampleMeta}; SampleError if the sample is bad."""
        decoded = self.decode(sample_id)
        return {"frames": decoded.frames, "text": decoded.text, "meta": decoded.meta}


class IndexedVideoDataset(Dataset):
    """Map-style: dataset[sample_id] -> VideoSample (transformed), or SkippedSample when it cannot be read.

    An item may also be (sample_id, valid) to mark a padding entry. Train-time augmentation draws from
    a generator seeded by (seed, epoch, sample_id): the same sample gets the same augmentation in an
    epoch whichever worker or rank reads it.
    """

    def __init__(self, shard_dir: str | os.PathLike, split: str, transform: VideoTransform, seed: int = 0, epoch: int = 0,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES):
        self.reader = IndexedShardReader(shard_dir, split, max_decoded_bytes=max_decoded_bytes)
        self.transform = transform
        self.seed = seed
        self.epoch = epoch

    @property
    def data_dir(self) -> str:
        return self.reader.shard_dir

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: int | tuple[int, bool]) -> VideoSample | SkippedSample:
        sample_id, valid = (int(item[0]), bool(item[1])) if isinstance(item, tuple) else (int(item), True)
        try:
            decoded = self.reader.decode(sample_id)
        except SampleError as error:
            return SkippedSample(self.reader.where(sample_id), sample_key(self.reader.split, sample_id), error.cause, error.detail)
        rng = random.Random(derive_seed(self.seed, self.epoch, sample_id)) if self.transform.train else None
        frames = self.transform(decoded.frames, rng)
        return VideoSample(frames, decoded.text, decoded.meta.sample_id, decoded.meta.sentence_id, decoded.key, valid)


class IndexedCollate:
    """Collate VideoSamples; a skipped one is counted and replaced by a valid=False copy of a good row.

    Replacing (rather than dropping) keeps every rank's batch the same size, which the all-gather of
    the contrastive loss needs. A batch with no readable sample at all borrows the next readable ids.
    Works with any map-style video dataset that takes `dataset[(index, valid)]` and has a `data_dir`.
    """

    def __init__(self, dataset: IndexedVideoDataset, normalize: bool = True, max_borrow: int = 64):
        self.dataset = dataset
        self.normalize = normalize
        self.max_borrow = max_borrow

    def __call__(self, items: list[VideoSample | SkippedSample]) -> dict:
        stats = SkipStats()
        good = [item for item in items if isinstance(item, VideoSample)]
        for item in items:
            if isinstance(item, SkippedSample):
                stats.record_skip(item.cause)
                log_skip(item)
            if isinstance(item, SkippedSample) or item.valid:
                stats.seen += 1
        if not good:
            good = [self._borrow(items)]
        filler = good[0]
        rows = [item if isinstance(item, VideoSample) else _as_padding(filler) for item in items]
        batch = collate_videos(rows, normalize=self.normalize)
        batch[STATS_KEY] = stats.to_dict()
        return batch

    def _borrow(self, items: list) -> VideoSample:
        start = int(items[0].key.rsplit("_", 1)[-1])  # keys are f"{split}_{sample_id:08d}"
        for step in range(1, self.max_borrow + 1):
            candidate = self.dataset[((start + step) % len(self.dataset), False)]
            if isinstance(candidate, VideoSample):
                return candidate
        raise TooManyBadSamples(
            f"{self.dataset.data_dir}: none of {self.max_borrow} samples after {items[0].key} is readable"
        )


def _as_padding(sample: VideoSample) -> VideoSample:
    return VideoSample(sample.frames, sample.text, sample.sample_id, sample.sentence_id, sample.key, valid=False)


class EntryBatches:
    """Wraps a sampler of sample-id lists into lists of (sample_id, valid), padded to batch_size."""

    def __init__(self, id_batches: Iterable[list[int]], batch_size: int):
        self.id_batches = id_batches
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.id_batches)  # TypeError when the sampler has none, as DataLoader expects

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for ids in self.id_batches:
            ids = [int(sample_id) for sample_id in ids]
            if not ids or len(ids) > self.batch_size:
                raise ValueError(f"the batch sampler gave {len(ids)} ids; expected 1..{self.batch_size}")
            yield [(sample_id, True) for sample_id in ids] + [(ids[0], False)] * (self.batch_size - len(ids))


def make_indexed_loader(
    shard_dir: str | os.PathLike,
    split: str,
    batch_sampler: Iterable[list[int]],
    batch_size: int,
    cfg: ReaderConfig,
    train: bool = True,
    epoch: int = 0,
) -> VideoLoader:
    """Batches of the sample ids `batch_sampler` yields for this rank (shorter lists padded with valid=False).

    Under a process group, every rank must iterate it in step (the ranks agree on bad-sample decisions)."""
    dataset = IndexedVideoDataset(shard_dir, split, VideoTransform.from_config(cfg, train=train), cfg.seed, epoch,
                                  cfg.max_decoded_bytes)
    entries = EntryBatches(batch_sampler, batch_size)
    loader = DataLoader(dataset, batch_sampler=entries, collate_fn=IndexedCollate(dataset, cfg.normalize), **dataloader_kwargs(cfg))
    num_batches = len(batch_sampler) if hasattr(batch_sampler, "__len__") else None
    return VideoLoader(loader, num_batches, str(shard_dir), cfg)


def eval_sample_ids(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[list[tuple[int, bool]]]:
    """This rank's batches of (sample_id, valid): ids rank, rank + world, ...; padded so every rank has
    ceil(ceil(N / world) / batch_size) batches of the same sizes. Across ranks each id is valid exactly once."""
    check_rank(rank, world_size)
    per_rank = -(-num_samples // world_size)
    mine = [(sample_id, True) for sample_id in range(rank, num_samples, world_size)]
    filler = mine[0][0] if mine else 0
    mine += [(filler, False)] * (per_rank - len(mine))
    return [mine[start : start + batch_size] for start in range(0, per_rank, batch_size)]


def make_eval_loader(
    shard_dir: str | os.PathLike, split: str, batch_size: int, rank: int, world_size: int, cfg: ReaderConfig,
    require_every_sample: bool = True,
) -> VideoLoader:
    """Deterministic transforms; every sample exactly once across ranks (valid=True), equal batch counts.

    `require_every_sample` (default): an unreadable sample stops the evaluation with an error naming it, on
    every rank (a score on a subset would be silently incomparable). False: it is skipped and counted."""
    dataset = IndexedVideoDataset(shard_dir, split, VideoTransform.from_config(cfg, train=False), cfg.seed,
                                  max_decoded_bytes=cfg.max_decoded_bytes)
    if len(dataset) == 0:
        raise ValueError(f"{shard_dir} split {split!r} has no samples")
    batches = eval_sample_ids(len(dataset), batch_size, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=IndexedCollate(dataset, cfg.normalize), **dataloader_kwargs(cfg))
    return VideoLoader(loader, len(batches), str(shard_dir), cfg, world_size=world_size,
                       require_every_sample=require_every_sample)
