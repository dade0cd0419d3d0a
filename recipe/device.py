"""Batches onto the accelerator: uint8 frames cross the host-device link and are normalised on the device.

A batch of frames as uint8 is a quarter of the bytes of float32 frames, in the loader workers' shared
memory, in the pinned copy and over PCIe; normalising costs one pass over the frames, which the GPU does
in microseconds and a loader worker in milliseconds. The training loop, evaluation and the GPU check all
move frames through `frames_to_device`, so a loader may hand over either uint8 or already-normalised
frames (`ReaderConfig.output`).
"""
from __future__ import annotations

import torch

from sharded_data.transforms import normalize_frames


def default_device() -> torch.device:
    """This process's GPU when there is one (the one `recipe.dist.init_distributed` selected), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def frames_to_device(frames: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frames [B,T,3,H,W] on `device` in `dtype`, ImageNet-normalised there if they arrive as uint8 pixels.

    Normalisation runs in fp32 before the cast, as the loader's own normalisation does, so bf16 frames are
    the rounding of the same numbers.
    """
    frames = frames.to(device, non_blocking=True)
    if frames.dtype == torch.uint8:
        frames = normalize_frames(frames)
    return frames.to(dtype)
