"""One raw WebDataset sample ({__key__, mp4 | frames.npy, txt, json} -> bytes) -> tensors, or a SampleError.

Every reader of this package (the stream, the indexed reader, `inspect`) decodes through here, so a sample is
good or bad the same way everywhere. What is checked, in order (cheap checks before the video is decoded):
the members exist and are not empty; the text is UTF-8 and not blank; the json is a valid `SampleMeta`
(types and ranges); given the split's index, the sample's ids agree with it (sample id from its key, split,
sentence id: a wrong sentence id would silently turn a pair into a false negative); the video decodes within
the decode limit; and it has the number of frames its json says.

Frames are chosen before decoding: given `frame_indices` (the temporal plan of the sample's clip, drawn from the
frame count alone: `VideoTransform.frame_indices`), only the frames the clip shows are kept (H.264: converted to
RGB; npy: copied out of the member, or not copied at all when the member's buffer is writable, as the indexed
reader's is: the collate then copies the clip's frames straight into the batch). The count the plan is drawn from is the json's `n_frames`, which the writer
recorded by decoding the video and which is checked against the decoded count afterwards, as before: so the plan
is the one a decode of every frame would have drawn, or the sample is bad (json disagreeing with its video) either
way. The container's own claims (npy header, mp4 frame count) only bound the decode size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sharded_data.bad_samples import (
    BAD_META,
    EMPTY_VIDEO,
    MISSING_TEXT,
    MISSING_VIDEO,
    TEXT_ENCODING_ERROR,
    VIDEO_DECODE_ERROR,
    VIDEO_TOO_LARGE,
    ZERO_FRAMES,
    SampleError,
)
from sharded_data.format import (
    DEFAULT_MAX_DECODED_BYTES,
    VIDEO_EXTENSIONS,
    DecodeLimitError,
    SampleMeta,
    ShardIndex,
    decode_video_frames,
)


@dataclass
class DecodedSample:
    frames: torch.Tensor  # uint8 [U, H, W, 3]: every frame, or (given frame_indices) those the clip shows, in order
    # (or still every frame, when that costs nothing: an npy member viewed in place)
    text: str
    meta: SampleMeta
    key: str
    frame_index: torch.Tensor  # int64 [T]: the clip's frames as positions in `frames` (every frame: 0..U-1)


def decode_raw_sample(raw: dict, index: ShardIndex | None = None,
                      max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                      frame_indices: Callable[[int], torch.Tensor] | None = None) -> DecodedSample:
    """Decode and check one sample (see the module docstring); SampleError(cause, detail) if it is bad.

    `frame_indices(num_frames)`: the clip's frames (non-decreasing indices into the video); only those are
    decoded. It is called once, with the json's frame count, before the video is decoded."""
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
    if index is not None:
        check_against_index(key, meta, index)
    if frame_indices is None:
        wanted = keep = positions = None
    else:
        wanted = frame_indices(meta.n_frames)
        keep, positions = frames_to_decode(wanted)
    try:
        frames, total, rows = decode_video_frames(video_ext, raw[video_ext], keep, max_decoded_bytes)
    except DecodeLimitError as error:
        raise SampleError(VIDEO_TOO_LARGE, f"{video_ext} member: {error}") from None
    except Exception as error:  # PyAV and numpy raise many types on garbage; all mean "undecodable"
        cause = ZERO_FRAMES if "zero frames" in str(error) else VIDEO_DECODE_ERROR
        raise SampleError(cause, f"{video_ext} member: {type(error).__name__}: {error}") from None
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SampleError(VIDEO_DECODE_ERROR, f"{video_ext} member has empty frames {frames.shape}")
    if total != meta.n_frames:
        raise SampleError(BAD_META, f"json says {meta.n_frames} frames, the {video_ext} member has {total}")
    if wanted is None:
        frame_index = torch.arange(total)
    else:
        frame_index = wanted if rows is None else positions  # every frame (an npy view) or only the kept ones
    return DecodedSample(torch.from_numpy(frames), text, meta, key, frame_index)


def frames_to_decode(frame_index: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """(the distinct frames a clip shows, in order: decode only those; the clip's frames as positions among them)."""
    distinct, positions = torch.unique(frame_index, sorted=True, return_inverse=True)
    return distinct.tolist(), positions


def check_against_index(key: str, meta: SampleMeta, index: ShardIndex) -> None:
    """The sample id (from the key and the json), split and sentence id must be the index's."""
    split, _, number = key.rpartition("_")
    if split != index.split or not number.isdigit() or int(number) >= index.num_samples:
        raise SampleError(BAD_META, f"key {key!r} is not one of split {index.split!r}'s {index.num_samples} samples")
    sample_id = int(number)
    for field, found, expected in (("sample_id", meta.sample_id, sample_id), ("split", meta.split, index.split),
                                   ("sentence_id", meta.sentence_id, index.sentence_id[sample_id])):
        if found != expected:
            raise SampleError(BAD_META, f"json {field} {found!r} disagrees with the index ({expected!r})")
