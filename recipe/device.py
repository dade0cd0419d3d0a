"""Batches onto the accelerator: frames cross the host-device link as uint8 and become the model's input there.

A batch of frames as uint8 is a quarter of the bytes of float32 frames, in the loader workers' shared
memory, in the pinned copy and over PCIe; normalising costs one pass over the frames, which the GPU does
in microseconds and a loader worker in milliseconds. A "stored" batch (`ReaderConfig.output="stored"`, what
GPU runs read) goes further: the frames arrive at their stored size (cut to each clip's crop) with each clip's
frame indices, and the resize, the gather by frame index and the HWC -> CHW layout run here too
(`sharded_data.transforms.render_stored_batch`): they were most of a loader core's time
(benchmarks/results/data.md, "Feeding a GPU"). The training loop, evaluation and the GPU check all move
frames through `batch_frames_to_device`, so a loader may hand over stored, uint8 or already-normalised frames.
"""
from __future__ import annotations

import torch

from sharded_data.transforms import STORED_FRAMES, normalize_frames, render_stored_batch


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


def batch_frames_to_device(batch: dict, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch's model input [B,T,3,S,S] on `device` in `dtype`, whatever the loader's output setting: a stored
    batch is rendered (crop, resize, gather, normalise, in fp32) on the device, other frames as `frames_to_device`."""
    if STORED_FRAMES in batch:
        return render_stored_batch(batch, device).to(dtype)
    return frames_to_device(batch["frames"], device, dtype)
