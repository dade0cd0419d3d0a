"""Per-video transforms run inside the DataLoader workers, and the collate that pads a batch in time.

A decoded video (uint8 torch tensor T x H x W x 3) becomes uint8 T' x 3 x S x S:

1. temporal sampling: at train time a random speed change (resample to T / speed frames) and random
   frame dropping; then a cap of `max_frames` (random subset at train, evenly spaced at eval);
2. spatial: one crop for the whole clip (random size and place at train, centered at eval), then a
   resize to `frame_size` x `frame_size`.

Eval is deterministic (no random draw at all). There is no horizontal flip: mirroring a signer
swaps the dominant hand, which changes the sign.

`collate_videos` builds the contract's Batch: frames [B, T, 3, H, W] zero-padded in time, frame_mask,
sample_ids, sentence_ids, texts, keys, valid. It also normalizes (ImageNet mean/std, float32), once per
batch, straight into the shared-memory buffer that crosses the worker pipe: the float frames are 4x
the bytes of the pixels, and every pass over them is the loader's largest cost after decoding. With
normalize=False (ReaderConfig.output="uint8") the batch keeps uint8 pixels: for tests, and for GPU
runs that call `normalize_frames` on the device after a 4x smaller transfer.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch.utils.data import get_worker_info

from sharded_data.reader_config import ReaderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VideoSample:
    """One decoded, transformed video with what the batch needs to know about it."""

    frames: torch.Tensor  # uint8 [T, 3, S, S]
    text: str
    sample_id: int
    sentence_id: int
    key: str
    valid: bool = True


class VideoTransform:
    """Temporal sampling + crop + resize, uint8 in and out; `train=False` is deterministic."""

    def __init__(
        self,
        frame_size: int,
        max_frames: int,
        train: bool,
        speed_range: tuple[float, float] = (0.8, 1.2),
        frame_drop: float = 0.1,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        eval_crop: float = 1.0,
    ):
        if frame_size <= 0 or max_frames <= 0:
            raise ValueError(f"frame_size ({frame_size}) and max_frames ({max_frames}) must be positive")
        self.frame_size = frame_size
        self.max_frames = max_frames
        self.train = train
        self.speed_range = speed_range
        self.frame_drop = frame_drop
        self.crop_scale = crop_scale
        self.eval_crop = eval_crop

    @classmethod
    def from_config(cls, cfg: ReaderConfig, train: bool) -> "VideoTransform":
        return cls(
            frame_size=cfg.frame_size,
            max_frames=cfg.max_frames,
            train=train,
            speed_range=cfg.speed_range,
            frame_drop=cfg.frame_drop,
            crop_scale=cfg.crop_scale,
            eval_crop=cfg.eval_crop,
        )

    def __call__(self, frames: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> [T', 3, S, S]. `rng` is required at train time (seeded per worker)."""
        if self.train and rng is None:
            raise ValueError("a train-time transform needs a seeded random.Random")
        frames = frames[self.frame_indices(frames.shape[0], rng)]
        top, left, height, width = self.crop_box(frames.shape[1], frames.shape[2], rng)
        frames = frames[:, top : top + height, left : left + width].permute(0, 3, 1, 2)  # [T, 3, h, w]
        return self.resize(frames)

    def frame_indices(self, num_frames: int, rng: random.Random | None) -> torch.Tensor:
        if not self.train:
            if num_frames <= self.max_frames:
                return torch.arange(num_frames)
            return torch.linspace(0, num_frames - 1, self.max_frames).round().long()
        speed = rng.uniform(*self.speed_range)
        length = max(1, round(num_frames / speed))
        indices = torch.linspace(0, num_frames - 1, length).round().long().tolist()
        kept = [index for index in indices if rng.random() >= self.frame_drop] or [rng.choice(indices)]
        if len(kept) > self.max_frames:
            kept = [kept[position] for position in sorted(rng.sample(range(len(kept)), self.max_frames))]
        return torch.tensor(kept, dtype=torch.long)

    def crop_box(self, height: int, width: int, rng: random.Random | None) -> tuple[int, int, int, int]:
        """(top, left, height, width) of one crop for the whole clip; aspect ratio kept."""
        scale = rng.uniform(*self.crop_scale) if self.train else self.eval_crop
        crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
        if self.train:
            return rng.randint(0, height - crop_h), rng.randint(0, width - crop_w), crop_h, crop_w
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        size = self.frame_size
        if frames.shape[-2:] == (size, size):
            return frames.contiguous()
        shrinking = frames.shape[-2] > size or frames.shape[-1] > size
        frames = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=shrinking)
        return frames.round_().clamp_(0, 255).to(torch.uint8)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [..., 3, H, W] -> float32 ImageNet-normalized, on the tensor's device.

    For output="uint8" loaders: call it in the training step after moving the batch to the GPU
    (time padding then holds -mean/std instead of 0; frame_mask marks it either way).
    """
    return _normalize_float_pixels(frames.float())


def _normalize_float_pixels(pixels: torch.Tensor) -> torch.Tensor:
    # (x / 255 - mean) / std as one multiply and one subtract, in place: the dominant per-frame cost
    # after decoding, so two passes over the frames instead of four.
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return pixels.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def collate_videos(samples: list[VideoSample], normalize: bool = True) -> dict:
    """Pad in time, stack and (by default) normalize: the contract's Batch."""
    if not samples:
        raise ValueError("collate_videos got an empty list of samples")
    lengths = [sample.frames.shape[0] for sample in samples]
    shape = (len(samples), max(lengths), *samples[0].frames.shape[1:])
    frames = _batch_buffer(shape, torch.float32 if normalize else torch.uint8)
    frame_mask = torch.zeros(shape[:2], dtype=torch.bool)
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        frames[row, :length] = sample.frames  # uint8 -> float32 on the way in when normalizing
        frames[row, length:] = 0
        if normalize:
            _normalize_float_pixels(frames[row, :length])
        frame_mask[row, :length] = True
    return {
        "frames": frames,
        "frame_mask": frame_mask,
        "sample_ids": torch.tensor([sample.sample_id for sample in samples], dtype=torch.int64),
        "sentence_ids": torch.tensor([sample.sentence_id for sample in samples], dtype=torch.int64),
        "texts": [sample.text for sample in samples],
        "keys": [sample.key for sample in samples],
        "valid": torch.tensor([sample.valid for sample in samples], dtype=torch.bool),
    }


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor; in a DataLoader worker, in shared memory, so sending it to the main
    process copies nothing (what torch's default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)
