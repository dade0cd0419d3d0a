"""Shards -> batches: the streaming train loader, the indexed reader, and the eval loader.

Three ways to read a split of a shard directory, all producing the contract's Batch dict and all
decoding + transforming inside the DataLoader workers (tensors, not numpy, cross the worker pipe):

- `make_train_loader`: a WebDataset stream, as an explicit stage list
      shard list (seeded, epoch-dependent order, the same on every rank, repeated in passes)
      -> split by rank (explicit rank / world_size) -> split by worker
      -> tarfile_to_samples(handler=our counting handler) -> sample shuffle buffer (seeded)
      -> decode + transform -> batch + count
  Every rank yields exactly floor(N / (world_size * batch_size)) batches (ZeRO-3 hangs when ranks
  disagree): each worker takes its share of that count and cycles over its shards until it has it.
  With fewer shards than ranks x workers (tiny corpora), every worker reads all shards and keeps every
  (ranks x workers)-th sample instead, so no worker is ever empty.
- `IndexedShardReader.get(sample_id)`: random access through the index (byte offset + size of the
  sample's members), one positional read per sample. `IndexedVideoDataset` is its map-style Dataset
  with the same transforms, and `make_indexed_loader` drives it from a batch sampler that yields this
  rank's lists of sample ids (the Pair Selection curriculum sampler).
- `make_eval_loader`: every sample exactly once across ranks (rank-strided ids through the indexed
  reader), padded to the same number of equally sized batches on every rank with entries marked
  valid=False (they repeat a real sample; drop them by `valid` or sample id when gathering results).

Bad samples are skipped, logged once and counted (see bad_samples.py); `loader.stats` holds the
aggregated {seen, skipped, by_cause}, and the loader raises TooManyBadSamples above the limit.
Per-video transforms and the collate (which normalizes, once per batch) are in transforms.py.
"""
from __future__ import annotations

import io
import itertools
import os
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, get_worker_info

from sharded_data.bad_samples import (
    BAD_META,
    EMPTY_VIDEO,
    MISSING_TEXT,
    MISSING_VIDEO,
    TAR_READ_ERROR,
    TEXT_ENCODING_ERROR,
    VIDEO_DECODE_ERROR,
    ZERO_FRAMES,
    SampleError,
    SkippedSample,
    SkipStats,
    TarErrorHandler,
    TooManyBadSamples,
    check_bad_fraction,
    log_skip,
)
from sharded_data.format import VIDEO_EXTENSIONS, SampleMeta, ShardIndex, decode_video, load_index, sample_key
from sharded_data.transforms import VideoSample, VideoTransform, collate_videos

OUTPUTS = ("normalized", "uint8")
STATS_KEY = "_skip_stats"  # rides along each batch out of the worker; the loader pops it


@dataclass
class ReaderConfig:
    """How videos become batches. Train-time knobs (speed, drop, crop) are ignored at eval."""

    frame_size: int = 224
    """Output frames are frame_size x frame_size."""
    max_frames: int = 256
    """Cap on frames per video after temporal sampling (evenly spaced at eval, random subset at train)."""
    speed_range: tuple[float, float] = (0.8, 1.2)
    """Train: play speed drawn from this range (1.2 = 20% faster, fewer frames)."""
    frame_drop: float = 0.1
    """Train: probability of dropping each frame after the speed change."""
    crop_scale: tuple[float, float] = (0.8, 1.0)
    """Train: side of the random crop as a fraction of the frame's sides."""
    eval_crop: float = 1.0
    """Eval: side of the center crop as a fraction of the frame's sides (1.0 = the whole frame)."""
    output: str = "normalized"
    """"normalized" (float32, ImageNet mean/std: the contract) or "uint8" (raw pixels, normalize on the GPU)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (decoding runs there)."""
    shuffle_buffer: int = 500
    """Train: samples held in the shuffle buffer (encoded bytes, so it stays small)."""
    shuffle_initial: int = 100
    """Train: samples buffered before the first one is yielded."""
    bad_fraction_limit: float = 0.05
    """Stop the run when more than this fraction of samples could not be read ..."""
    min_samples_for_limit: int = 100
    """... once at least this many samples were seen (one bad sample among the first 3 is not a trend)."""
    seed: int = 0
    """Seeds shard order, sample shuffle and augmentation (combined with epoch, rank and worker)."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (set on GPU machines)."""

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"ReaderConfig.output={self.output!r}: choose one of {OUTPUTS}")

    @property
    def normalize(self) -> bool:
        return self.output == "normalized"


# ------------------------------------------------------------------------------------ decoding one sample


@dataclass
class DecodedSample:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    text: str
    meta: SampleMeta
    key: str


def decode_raw_sample(raw: dict) -> DecodedSample:
    """A WebDataset sample dict ({__key__, mp4 | frames.npy, txt, json} -> bytes) -> tensors; SampleError if bad."""
    key = raw.get("__key__", "?")
    video_ext = next((ext for ext in VIDEO_EXTENSIONS.values() if ext in raw), None)
    if video_ext is None:
        members = sorted(name for name in raw if not name.startswith("__"))
        raise SampleError(MISSING_VIDEO, f"no video member (mp4 or frames.npy); members: {members}")
    if len(raw[video_ext]) == 0:
        raise SampleError(EMPTY_VIDEO, f"the {video_ext} member is empty (0 bytes)")
    if "txt" not in raw:
        raise SampleError(MISSING_TEXT, "no txt member")
    try:
        text = raw["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise SampleError(TEXT_ENCODING_ERROR, f"txt member is not UTF-8 ({error})") from None
    if not text:
        raise SampleError(MISSING_TEXT, "txt member is empty")
    if "json" not in raw:
        raise SampleError(BAD_META, "no json member")
    try:
        meta = SampleMeta.from_json_bytes(raw["json"])
    except (ValueError, KeyError, TypeError) as error:
        raise SampleError(BAD_META, f"json member unreadable ({type(error).__name__}: {error})") from None
    try:
        frames = decode_video(video_ext, raw[video_ext])
    except Exception as error:  # PyAV and numpy raise many types on garbage; all mean "undecodable"
        cause = ZERO_FRAMES if "zero frames" in str(error) else VIDEO_DECODE_ERROR
        raise SampleError(cause, f"{video_ext} member: {type(error).__name__}: {error}") from None
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SampleError(VIDEO_DECODE_ERROR, f"{video_ext} member has empty frames {frames.shape}")
    return DecodedSample(torch.from_numpy(frames), text, meta, key)


def _worker_id_and_count() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def derive_seed(*parts: int) -> int:
    """One seed per combination of (seed, epoch, rank, worker, ...); stable across Python runs."""
    return int.from_bytes(random.Random(repr(tuple(int(part) for part in parts))).randbytes(8), "little")


# ------------------------------------------------------------------------------- streaming pipeline stages


class TrainStream(torch.utils.data.IterableDataset):
    """One rank's training samples for one epoch: passes over its part of the shards, without end.

    Each pass is the explicit WebDataset stage list below. The shard order depends on (seed, epoch,
    pass) only, so it is identical on every rank and worker, which makes the rank and worker splits
    disjoint and complete within a pass. The shuffle buffer is flushed at the end of each pass, so
    one pass is one permutation of the worker's samples. The batching stage after this one stops
    after the worker's share of batches; a pass that read no sample at all raises instead of looping.
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, epoch: int, cfg: ReaderConfig, stats: SkipStats):
        self.urls, self.rank, self.world_size, self.epoch, self.cfg, self.stats = urls, rank, world_size, epoch, cfg, stats
        self.transform = VideoTransform.from_config(cfg, train=True)
        # Fewer shards than ranks x workers (tiny corpora): split samples instead, so no worker is empty.
        self.split_shards = len(urls) >= world_size * max(1, cfg.num_workers)

    def one_pass(self, pass_number: int, progress: PassProgress, rng: random.Random) -> wds.DataPipeline:
        order = list(self.urls)
        random.Random(derive_seed(self.cfg.seed, self.epoch, pass_number)).shuffle(order)
        stages: list = [wds.SimpleShardList(order)]
        if self.split_shards:
            stages += [SplitByRank(self.rank, self.world_size), wds.split_by_worker]
        stages += [wds.tarfile_to_samples(handler=TarErrorHandler(self.stats)), CountRawSamples(progress)]
        if not self.split_shards:
            stages += [SplitSamplesByRankAndWorker(self.rank, self.world_size)]
        worker, _ = _worker_id_and_count()
        shuffle_rng = random.Random(derive_seed(self.cfg.seed, self.epoch, self.rank, worker, pass_number))
        stages += [
            wds.shuffle(self.cfg.shuffle_buffer, self.cfg.shuffle_initial, rng=shuffle_rng),
            DecodeAndTransform(self.transform, self.stats, rng),
        ]
        return wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[VideoSample]:
        worker, _ = _worker_id_and_count()
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


class CountRawSamples:
    def __init__(self, progress: PassProgress):
        self.progress = progress

    def __call__(self, source: Iterable[dict]) -> Iterator[dict]:
        for raw in source:
            self.progress.raw_samples += 1
            yield raw


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
        worker, num_workers = _worker_id_and_count()
        slot = self.rank + self.world_size * worker
        return itertools.islice(source, slot, None, self.world_size * num_workers)


class DecodeAndTransform:
    """Raw sample -> VideoSample; a bad sample is logged once, counted and left out."""

    def __init__(self, transform: VideoTransform, stats: SkipStats, rng: random.Random):
        self.transform, self.stats, self.rng = transform, stats, rng

    def __call__(self, source: Iterable[dict]) -> Iterator[VideoSample]:
        for raw in source:
            self.stats.seen += 1
            try:
                decoded = decode_raw_sample(raw)
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
        worker, num_workers = _worker_id_and_count()
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


# -------------------------------------------------------------------------------------- the loader object


class VideoLoader:
    """What the training loop iterates: batches (Batch dicts), `len()` = batches on this rank, `stats`."""

    def __init__(self, dataloader: DataLoader, num_batches: int | None, data_dir: str, cfg: ReaderConfig):
        self.dataloader = dataloader
        self.num_batches = num_batches
        self.data_dir = data_dir
        self.cfg = cfg
        self._stats = SkipStats()

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader's batch sampler has no length")
        return self.num_batches

    @property
    def stats(self) -> dict:
        """{seen, skipped, by_cause} over everything this loader has yielded so far (all workers)."""
        return self._stats.to_dict()

    def __iter__(self) -> Iterator[dict]:
        yielded = 0
        batches = iter(self.dataloader)
        try:
            for batch in batches:
                self._stats.add(batch.pop(STATS_KEY))
                check_bad_fraction(self._stats, self.cfg.bad_fraction_limit, self.cfg.min_samples_for_limit, self.data_dir)
                yielded += 1
                yield batch
        finally:
            # Stopped early (error, break): stop the workers now. Left to the garbage collector, torch's
            # shutdown waits 5 s per worker (its join times out), seen with torch 2.13.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        if self.num_batches is not None and yielded != self.num_batches:
            # Unequal batch counts across ranks hang ZeRO-3 collectives: fail loudly instead.
            raise RuntimeError(f"{self.data_dir}: yielded {yielded} batches, promised {self.num_batches}")


def dataloader_kwargs(cfg: ReaderConfig) -> dict:
    kwargs = {"num_workers": cfg.num_workers, "pin_memory": cfg.pin_memory}
    if cfg.num_workers > 0:
        kwargs["prefetch_factor"] = cfg.prefetch_factor
    return kwargs


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


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
    _check_rank(rank, world_size)
    shard_dir = str(shard_dir)
    index = load_index(shard_dir, split)
    batches = train_batches_per_rank(index.num_samples, batch_size, world_size)
    if batches == 0:
        raise ValueError(
            f"{shard_dir} split {split!r}: {index.num_samples} samples are fewer than one batch per rank "
            f"({world_size} ranks x batch size {batch_size}); lower the batch size or add data"
        )
    stats = SkipStats()
    stream = TrainStream(index.shard_paths(shard_dir), rank, world_size, epoch, cfg, stats)
    pipeline = wds.DataPipeline(stream, BatchWorkerShare(batch_size, batches, stats, cfg, shard_dir))
    loader = DataLoader(pipeline, batch_size=None, **dataloader_kwargs(cfg))
    return VideoLoader(loader, batches, shard_dir, cfg)


# ------------------------------------------------------------------------------------------ indexed access

_MEMBER_NAME = re.compile(r"^([^/.]+)\.(.+)$")  # the key is everything before the first dot, as in webdataset


class IndexedShardReader:
    """Random access by sample id: one positional read of the sample's bytes (index offset + size).

    File descriptors are opened lazily and kept per process (a DataLoader worker opens its own), and
    read with os.pread, so forked workers never share a file position.
    """

    def __init__(self, shard_dir: str | os.PathLike, split: str, index: ShardIndex | None = None):
        self.shard_dir = str(shard_dir)
        self.split = split
        self.index = index if index is not None else load_index(shard_dir, split)
        self.paths = self.index.shard_paths(shard_dir)
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
            self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return self._fds[shard]

    def read_raw(self, sample_id: int) -> dict:
        """The sample's members as a WebDataset-style dict {__key__, __url__, ext: bytes}; SampleError if unreadable."""
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} is outside 0..{len(self) - 1} of split {self.split!r}")
        key = sample_key(self.split, sample_id)
        offset, size = self.index.offset[sample_id], self.index.size[sample_id]
        try:
            data = os.pread(self._fd(self.index.shard[sample_id]), size, offset)
        except OSError as error:
            raise SampleError(TAR_READ_ERROR, f"cannot read {size} bytes at {offset}: {error}") from None
        if len(data) != size:
            raise SampleError(TAR_READ_ERROR, f"shard ends after {len(data)} of {size} bytes at offset {offset}")
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

    def get(self, sample_id: int) -> dict:
        """{"frames": uint8 tensor [T, H, W, 3], "text": str, "meta": SampleMeta}; SampleError if the sample is bad."""
        decoded = decode_raw_sample(self.read_raw(sample_id))
        return {"frames": decoded.frames, "text": decoded.text, "meta": decoded.meta}


class IndexedVideoDataset(Dataset):
    """Map-style: dataset[sample_id] -> VideoSample (transformed), or SkippedSample when it cannot be read.

    An item may also be (sample_id, valid) to mark a padding entry. Train-time augmentation draws from
    a generator seeded by (seed, epoch, sample_id): the same sample gets the same augmentation in an
    epoch whichever worker or rank reads it.
    """

    def __init__(self, shard_dir: str | os.PathLike, split: str, transform: VideoTransform, seed: int = 0, epoch: int = 0):
        self.reader = IndexedShardReader(shard_dir, split)
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
            decoded = decode_raw_sample(self.reader.read_raw(sample_id))
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
    """Batches of the sample ids `batch_sampler` yields for this rank (shorter lists padded with valid=False)."""
    dataset = IndexedVideoDataset(shard_dir, split, VideoTransform.from_config(cfg, train=train), cfg.seed, epoch)
    entries = EntryBatches(batch_sampler, batch_size)
    loader = DataLoader(dataset, batch_sampler=entries, collate_fn=IndexedCollate(dataset, cfg.normalize), **dataloader_kwargs(cfg))
    num_batches = len(batch_sampler) if hasattr(batch_sampler, "__len__") else None
    return VideoLoader(loader, num_batches, str(shard_dir), cfg)


def eval_sample_ids(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[list[tuple[int, bool]]]:
    """This rank's batches of (sample_id, valid): ids rank, rank + world, ...; padded so every rank has
    ceil(ceil(N / world) / batch_size) batches of the same sizes. Across ranks each id is valid exactly once."""
    _check_rank(rank, world_size)
    per_rank = -(-num_samples // world_size)
    mine = [(sample_id, True) for sample_id in range(rank, num_samples, world_size)]
    filler = mine[0][0] if mine else 0
    mine += [(filler, False)] * (per_rank - len(mine))
    return [mine[start : start + batch_size] for start in range(0, per_rank, batch_size)]


def make_eval_loader(
    shard_dir: str | os.PathLike, split: str, batch_size: int, rank: int, world_size: int, cfg: ReaderConfig
) -> VideoLoader:
    """Deterministic transforms; every sample exactly once across ranks (valid=True), equal batch counts."""
    dataset = IndexedVideoDataset(shard_dir, split, VideoTransform.from_config(cfg, train=False), cfg.seed)
    if len(dataset) == 0:
        raise ValueError(f"{shard_dir} split {split!r} has no samples")
    batches = eval_sample_ids(len(dataset), batch_size, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=IndexedCollate(dataset, cfg.normalize), **dataloader_kwargs(cfg))
    return VideoLoader(loader, len(batches), str(shard_dir), cfg)
