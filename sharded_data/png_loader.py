"""The baseline loader: per-frame PNG directories read image by image with PIL (the PHOENIX-2014T layout).

This is how the field's reference code (GFSLT-VLP and its descendants) feeds PHOENIX-2014T: one
folder of `images0001.png ...` per video, opened frame by frame in `__getitem__`. It is kept for two
reasons: the data benchmark compares the shards against it over the same frames, and users who have
not sharded their corpus yet can train from the release folders directly (slowly).

It produces the same Batch dicts as the shard readers (same transforms, same collate, same bad-sample
accounting: an unreadable image skips its video, logged once and counted in `loader.stats`).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from sharded_data.bad_samples import IMAGE_READ_ERROR, MISSING_TEXT, VIDEO_TOO_LARGE, ZERO_FRAMES, SkippedSample
from sharded_data.format import DEFAULT_MAX_DECODED_BYTES, DecodeLimitError, normalize_text, sample_key
from sharded_data.indexed import EntryBatches, IndexedCollate
from sharded_data.loader import VideoLoader, dataloader_kwargs, derive_seed
from sharded_data.reader_config import ReaderConfig
from sharded_data.sources import FrameDirectorySource, decode_limit
from sharded_data.transforms import VideoSample, VideoTransform


@dataclass
class PngVideo:
    """One video stored as a folder of frame images."""

    folder: str
    text: str
    sentence_id: int
    pattern: str = "*.png"


class PngFrameDataset(Dataset):
    """dataset[i] -> VideoSample read frame by frame with PIL, or SkippedSample when it cannot be read."""

    def __init__(self, videos: list[PngVideo], transform: VideoTransform, split: str = "train",
                 data_dir: str = "", seed: int = 0, epoch: int = 0,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES):
        self.videos = videos
        self.max_decoded_bytes = max_decoded_bytes
        self.transform = transform
        self.split = split
        self.data_dir = data_dir or (str(Path(videos[0].folder).parent) if videos else "")
        self.seed = seed
        self.epoch = epoch

    @classmethod
    def from_phoenix(cls, root: str | os.PathLike, split: str, transform: VideoTransform, **kwargs) -> "PngFrameDataset":
        """The PHOENIX-2014T release folder (features/fullFrame-210x260px + annotations/manual/*.corpus.csv)."""
        from sharded_data.sources import phoenix_sources

        sources = phoenix_sources(root, splits=(split,))[split]
        sentence_ids: dict[str, int] = {}
        videos = [
            PngVideo(src.path, src.text, sentence_ids.setdefault(normalize_text(src.text), len(sentence_ids)), src.pattern)
            for src in sources
        ]
        return cls(videos, transform, split=split, data_dir=str(root), **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, item: int | tuple[int, bool]) -> VideoSample | SkippedSample:
        index, valid = (int(item[0]), bool(item[1])) if isinstance(item, tuple) else (int(item), True)
        video = self.videos[index]
        key = sample_key(self.split, index)
        try:
            frames = read_frame_folder(video.folder, video.pattern, self.max_decoded_bytes)
        except OSError as error:  # PIL raises OSError subclasses (UnidentifiedImageError) on bad images
            return SkippedSample(video.folder, key, IMAGE_READ_ERROR, str(error))
        except DecodeLimitError as error:
            return SkippedSample(video.folder, key, VIDEO_TOO_LARGE, str(error))
        except ValueError as error:  # no frame, frames of different sizes, a decompression bomb
            cause = ZERO_FRAMES if "no frame matches" in str(error) else IMAGE_READ_ERROR
            return SkippedSample(video.folder, key, cause, str(error))
        if not video.text.strip():
            return SkippedSample(video.folder, key, MISSING_TEXT, "empty target sentence")
        rng = random.Random(derive_seed(self.seed, self.epoch, index)) if self.transform.train else None
        return VideoSample(self.transform(frames, rng), video.text.strip(), index, video.sentence_id, key, valid)


def read_frame_folder(folder: str | os.PathLike, pattern: str = "*.png",
                      max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> torch.Tensor:
    """uint8 [T, H, W, 3] from a folder of images, in file-name order, one PIL open per frame."""
    with decode_limit(max_decoded_bytes):
        return torch.from_numpy(FrameDirectorySource(name=str(folder), text="", path=str(folder), pattern=pattern).load_frames())


def make_png_loader(dataset: PngFrameDataset, batch_size: int, cfg: ReaderConfig, shuffle: bool) -> VideoLoader:
    """Batches over a PngFrameDataset (one process: no rank split; this is the single-machine baseline)."""
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, dataset.epoch) % 2**63)
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = EntryBatches(BatchSampler(sampler, batch_size, drop_last=shuffle), batch_size)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=IndexedCollate(dataset, cfg.normalize), **dataloader_kwargs(cfg))
    return VideoLoader(loader, len(batches), dataset.data_dir, cfg, world_size=1)
