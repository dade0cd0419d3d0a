"""How a decoded video becomes the model's frames, and the collate that pads a batch in time.

Two steps, which run in different places:

1. The plan, drawn in the DataLoader worker from the sample's random generator (so augmentation is
   deterministic, and a resumed run sees exactly the same): which frames in which order
   (`VideoTransform.frame_indices`: at train a random speed change (resample to T / speed frames) and random
   frame dropping; then a cap of `max_frames`: random subset at train, evenly spaced at eval), and one crop box
   for the whole clip (`crop_box`: random size and place at train, centered at eval). The frame indices need
   only the frame count, so the readers draw them before decoding and decode only the frames the clip uses
   (sharded_data/decode.py). A `Clip` is the decoded frames (uint8, stored size, H x W x 3) plus that plan.
2. The pixels (`clip_pixels` + the gather by frame index): crop, HWC -> CHW, resize to frame_size x frame_size
   (bilinear, antialiased when shrinking, in uint8 levels). The crop + resize in float was 67% of a training
   loader core's time (benchmarks/results/data.md); on a GPU it takes microseconds. `ReaderConfig.output` says
   where it runs: "stored" batches carry the clips' frames at their stored size with each clip's plan, and the
   training step renders the whole batch on its device (`render_stored_batch`); "uint8" and "normalized"
   batches are rendered in the worker by the same functions (the CPU path: tests, the demo, CPU training,
   `translate`). On a CPU the resize is torch's uint8 kernel (8-10x cheaper than in float), on a GPU it is
   done in float and rounded, as the CPU augmentation before did: the two agree within 1 of 255 levels
   (tests/test_device_augmentation.py states and checks the tolerance).

Eval is deterministic (no random draw at all). There is no horizontal flip: mirroring a signer swaps the
dominant hand, which changes the sign.

`collate_videos` builds the contract's Batch: frames [B, T, 3, H, W] zero-padded in time, frame_mask,
sample_ids, sentence_ids, texts, keys, valid. It also normalizes (ImageNet mean/std, float32), once per
batch, straight into the shared-memory buffer that crosses the worker pipe: the float frames are 4x
the bytes of the pixels, and every pass over them is the loader's largest cost after decoding. With
normalize=False (ReaderConfig.output="uint8") the batch keeps uint8 pixels: for tests, and for GPU
runs that call `normalize_frames` on the device after a 4x smaller transfer. With stored=True
(output="stored") it holds, instead of "frames", the STORED_KEYS below: see `collate_stored`.
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

# The keys of a stored batch (output="stored") that replace "frames": what `render_stored_batch` needs.
STORED_FRAMES = "stored_frames"  # uint8 [N]: each clip's frames, cut to its crop, one clip after the other
STORED_SHAPES = "stored_shapes"  # int64 [B, 3]: (frames, height, width) of clip b's part of stored_frames
FRAME_INDEX = "frame_index"  # int64 [B, T]: frame t of clip b is its stored frame frame_index[b, t] (0 in padding)
FRAME_SIZE = "frame_size"  # int: the side of the rendered frames
STORED_KEYS = (STORED_FRAMES, STORED_SHAPES, FRAME_INDEX, FRAME_SIZE)
FRAME_MASK = "frame_mask"  # bool [B, T], in every batch: True on the clip's frames, False on time padding


@dataclass
class Clip:
    """A decoded video and its plan: what a worker hands on, before any pixel is resized."""

    frames: torch.Tensor  # uint8 [U, H, W, 3]: the decoded frames the clip uses (a superset is fine), in time order
    frame_index: torch.Tensor  # int64 [T]: the clip's frames as positions in `frames` (a repeat = slowed down)
    crop_box: tuple[int, int, int, int]  # (top, left, height, width) in `frames`' pixels, one for the whole clip
    frame_size: int  # the rendered frames are frame_size x frame_size

    @property
    def num_frames(self) -> int:
        return self.frame_index.numel()

    def render(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The model's frames [T, 3, S, S]: uint8 (or written into `out`, uint8 or float32 pixel values)."""
        if out is None:
            out = torch.empty((self.num_frames, 3, self.frame_size, self.frame_size), dtype=torch.uint8)
        rows, frame_index = self.frames_used()
        if rows is not None and self.crop_box[2:] == (self.frame_size, self.frame_size):
            rows, frame_index = None, self.frame_index  # no resize: gather straight from the stored frames
        pixels = clip_pixels(self.frames, self.crop_box, self.frame_size, rows)
        if out.dtype == torch.uint8:
            pixels = pixels.to(torch.uint8)  # before the gather: once per distinct frame, not per shown frame
        gather_frames(pixels, frame_index, out, in_order(frame_index, pixels.shape[0]))
        return out

    def frames_used(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the rows of `frames` the clip shows, None if it shows every one; its frame indices among those rows)."""
        rows, positions = torch.unique(self.frame_index, sorted=True, return_inverse=True)
        if rows.numel() == self.frames.shape[0]:
            return None, self.frame_index  # every row shown (rows == 0..U-1)
        return rows, positions


@dataclass
class VideoSample:
    """One video of a batch with what the batch needs to know about it.

    `frames` is a `Clip` (the shard readers: rendered by the collate or on the device) or an already rendered
    uint8 tensor [T, 3, S, S] (a reader that transforms on its own, e.g. `VideoTransform.__call__`)."""

    frames: Clip | torch.Tensor
    text: str
    sample_id: int
    sentence_id: int
    key: str
    valid: bool = True


class VideoTransform:
    """The plan of a clip (frame indices, crop box) and, through `Clip.render`, its pixels; `train=False` is
    deterministic."""

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
        return self.clip(frames, rng).render()

    def clip(self, frames: torch.Tensor, rng: random.Random | None = None) -> Clip:
        """The plan for a whole decoded video (uint8 [T, H, W, 3]); no pixel is copied."""
        return self.clip_of_decoded(frames, self.frame_indices(frames.shape[0], rng), rng)

    def clip_of_decoded(self, frames: torch.Tensor, frame_index: torch.Tensor, rng: random.Random | None) -> Clip:
        """Draw the crop box (after the frame indices, from the same generator) for frames decoded for `frame_index`."""
        return Clip(frames, frame_index, self.crop_box(frames.shape[1], frames.shape[2], rng), self.frame_size)

    def frame_indices(self, num_frames: int, rng: random.Random | None) -> torch.Tensor:
        """Which frames of a `num_frames` video the clip shows, in order (non-decreasing; repeats when slowed)."""
        if self.train and rng is None:
            raise ValueError("a train-time transform needs a seeded random.Random")
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


# ------------------------------------------------------------------------------- the pixels (CPU or device)


def clip_pixels(frames: torch.Tensor, crop_box: tuple[int, int, int, int], frame_size: int,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Crop, HWC -> CHW and resize of every frame of uint8 [U, H, W, 3] (or of those at `rows`: only the crop of
    those is copied), on the frames' device: [U, 3, S, S].

    Bilinear, antialiased when shrinking either side (PIL-like: a plain bilinear resize of 512 px frames to 224
    aliases). A uint8 view when the crop is already S x S (nothing is copied). On a CPU, torch's uint8 kernel
    (fixed point, channels-last: 8-10x faster than resizing in float there, and within 1 of 255 levels of it on
    ~15-19% of the pixels); elsewhere `resize_in_float` (GPUs have no uint8 kernel).
    """
    top, left, height, width = (int(value) for value in crop_box)
    cropped = frames[:, top : top + height, left : left + width]
    pixels = (cropped if rows is None else cropped.index_select(0, rows)).permute(0, 3, 1, 2)
    if (height, width) == (frame_size, frame_size):
        return pixels
    shrinking = height > frame_size or width > frame_size
    if pixels.device.type == "cpu":
        return F.interpolate(pixels, size=(frame_size, frame_size), mode="bilinear", antialias=shrinking)
    return resize_in_float(pixels, frame_size, shrinking)


def resize_in_float(pixels: torch.Tensor, frame_size: int, antialias: bool) -> torch.Tensor:
    """uint8 [U, 3, h, w] -> float32 [U, 3, S, S] pixel values rounded to uint8 levels: the arithmetic of the
    CPU augmentation this project used before the resize moved to the device (a GPU does it in microseconds)."""
    resized = F.interpolate(pixels.float(), size=(frame_size, frame_size), mode="bilinear", antialias=antialias)
    return resized.round_().clamp_(0, 255)


def in_order(frame_index: torch.Tensor, count: int) -> bool:
    """Does a (CPU) frame index show each of `count` frames once, in order? (Then gathering is a plain copy.)"""
    return frame_index.numel() == count and bool((frame_index == torch.arange(count)).all())


def gather_frames(pixels: torch.Tensor, frame_index: torch.Tensor, out: torch.Tensor, every_frame_in_order: bool) -> None:
    """out[t] = pixels[frame_index[t]], written in place; `every_frame_in_order` (from `in_order`, decided on the
    host so that a GPU gather never waits for the device) makes it a plain copy."""
    if every_frame_in_order:
        out.copy_(pixels)  # the common case at eval
    elif out.dtype == pixels.dtype:
        torch.index_select(pixels, 0, frame_index, out=out)
    else:
        out.copy_(pixels.index_select(0, frame_index))


def render_stored_batch(batch: dict, device: torch.device | str, normalize: bool = True) -> torch.Tensor:
    """A stored batch's frames [B, T, 3, S, S] on `device`: resize and gather per clip, then (by default)
    ImageNet-normalize, float32. Time padding holds 0 before normalizing (-mean/std after), as `normalize_frames`
    gives it; frame_mask marks it either way.

    The bookkeeping (lengths, shapes) is read from the batch's CPU tensors, so nothing waits for the device;
    the pixels are copied to the device once, as uint8 at their stored size. One small loop over the clips (each
    has its own crop size): a handful of kernel launches per clip.
    """
    frame_index, frame_mask = batch[FRAME_INDEX], batch[FRAME_MASK]
    size = int(batch[FRAME_SIZE])
    stored = batch[STORED_FRAMES].to(device, non_blocking=True)
    index_on_device = frame_index.to(device, non_blocking=True)
    lengths = frame_mask.sum(dim=1).tolist()
    frames = torch.zeros((*frame_mask.shape, 3, size, size), dtype=torch.float32, device=stored.device)
    offset = 0
    for row, (count, height, width) in enumerate(batch[STORED_SHAPES].tolist()):
        clip = stored[offset : offset + count * height * width * 3].view(count, height, width, 3)
        offset += clip.numel()
        length = lengths[row]
        if length:
            pixels = clip_pixels(clip, (0, 0, height, width), size)
            gather_frames(pixels, index_on_device[row, :length], frames[row, :length],
                          in_order(frame_index[row, :length], count))
    return _normalize_float_pixels(frames) if normalize else frames


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


# --------------------------------------------------------------------------------------------- the collate


def collate_videos(samples: list[VideoSample], normalize: bool = True, stored: bool = False) -> dict:
    """Pad in time, stack and (by default) normalize: the contract's Batch. `stored`: a stored batch instead
    (see `collate_stored`; needs every sample's frames to be a Clip)."""
    if not samples:
        raise ValueError("collate_videos got an empty list of samples")
    if stored and all(isinstance(sample.frames, Clip) for sample in samples):
        batch = collate_stored([sample.frames for sample in samples])
    else:
        batch = collate_rendered([sample.frames for sample in samples], normalize)
    return {
        **batch,
        "sample_ids": torch.tensor([sample.sample_id for sample in samples], dtype=torch.int64),
        "sentence_ids": torch.tensor([sample.sentence_id for sample in samples], dtype=torch.int64),
        "texts": [sample.text for sample in samples],
        "keys": [sample.key for sample in samples],
        "valid": torch.tensor([sample.valid for sample in samples], dtype=torch.bool),
    }


def collate_rendered(videos: list[Clip | torch.Tensor], normalize: bool) -> dict:
    """frames [B, T, 3, S, S] (uint8, or float32 normalized) rendered here, on the CPU, and frame_mask."""
    lengths = [video.num_frames if isinstance(video, Clip) else video.shape[0] for video in videos]
    first = videos[0]
    frame_shape = (3, first.frame_size, first.frame_size) if isinstance(first, Clip) else tuple(first.shape[1:])
    shape = (len(videos), max(lengths), *frame_shape)
    frames = _batch_buffer(shape, torch.float32 if normalize else torch.uint8)
    frame_mask = torch.zeros(shape[:2], dtype=torch.bool)
    for row, (video, length) in enumerate(zip(videos, lengths)):
        if isinstance(video, Clip):
            video.render(out=frames[row, :length])
        else:
            frames[row, :length] = video  # uint8 -> float32 on the way in when normalizing
        frames[row, length:] = 0
        if normalize:
            _normalize_float_pixels(frames[row, :length])
        frame_mask[row, :length] = True
    return {"frames": frames, "frame_mask": frame_mask}


def collate_stored(clips: list[Clip]) -> dict:
    """The frames each clip shows, as decoded (uint8, HWC), cut to its crop box, packed one clip after the other
    (no padding: crops differ in size), with each clip's (frames, height, width) and frame indices among its
    packed frames: what `render_stored_batch` turns into the model's frames on the device. The only copy of the
    pixels on the way is this one into the batch buffer, and the crop cut makes it smaller, not larger."""
    sizes = {clip.frame_size for clip in clips}
    if len(sizes) != 1:
        raise ValueError(f"a batch's clips must share one frame size, got {sorted(sizes)}")
    lengths = [clip.num_frames for clip in clips]
    used = [clip.frames_used() for clip in clips]
    shapes = [(clip.frames.shape[0] if rows is None else rows.numel(), clip.crop_box[2], clip.crop_box[3])
              for clip, (rows, _) in zip(clips, used)]
    stored = _batch_buffer((sum(count * height * width * 3 for count, height, width in shapes),), torch.uint8)
    frame_index = torch.zeros((len(clips), max(lengths)), dtype=torch.int64)
    frame_mask = torch.zeros((len(clips), max(lengths)), dtype=torch.bool)
    offset = 0
    for row, (clip, (rows, index), (count, height, width)) in enumerate(zip(clips, used, shapes)):
        part = stored[offset : offset + count * height * width * 3].view(count, height, width, 3)
        offset += part.numel()
        top, left = clip.crop_box[:2]
        cropped = clip.frames[:, top : top + height, left : left + width]
        if rows is None:
            part.copy_(cropped)
        else:  # straight from the stored frames into the batch (no intermediate copy)
            torch.index_select(cropped, 0, rows, out=part)
        frame_index[row, : lengths[row]] = index
        frame_mask[row, : lengths[row]] = True
    return {STORED_FRAMES: stored, STORED_SHAPES: torch.tensor(shapes, dtype=torch.int64), FRAME_INDEX: frame_index,
            FRAME_SIZE: sizes.pop(), FRAME_MASK: frame_mask}


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor; in a DataLoader worker, in shared memory, so sending it to the main
    process copies nothing (what torch's default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)
