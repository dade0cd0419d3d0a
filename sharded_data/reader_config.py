"""How videos become batches: the one settings object every reader, transform and loader of this package takes.

It lives in its own module so that transforms.py (which reads it) and the readers (which pass it on) do not
import each other.
"""
from __future__ import annotations

from dataclasses import dataclass

from sharded_data.format import DEFAULT_MAX_DECODED_BYTES

OUTPUTS = ("normalized", "uint8")


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
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    """A video whose decoded frames (T x H x W x 3 bytes) would exceed this is a bad sample, refused before its
    frames are allocated: one small file claiming a huge video must not exhaust a loader worker's memory."""
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
