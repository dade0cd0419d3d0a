"""One raw WebDataset sample ({__key__, mp4 | frames.npy, txt, json} -> bytes) -> tensors, or a SampleError.

Every reader of this package (the stream, the indexed reader, `inspect`) decodes through here, so a sample is
good or bad the same way everywhere. What is checked, in order (cheap checks before the video is decoded):
the members exist and are not empty; the text is UTF-8 and not blank; the json is a valid `SampleMeta`
(types and ranges); given the split's index, the sample's ids agree with it (sample id from its key, split,
sentence id: a wrong sentence id would silently turn a pair into a false negative); the video decodes within
the decode limit; and it has the number of frames its json says.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    decode_video,
)


@dataclass
class DecodedSample:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    text: str
    meta: SampleMeta
    key: str


def decode_raw_sample(raw: dict, index: ShardIndex | None = None,
                      max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> DecodedSample:
    """Decode and check one sample (see the module docstring); SampleError(cause, detail) if it is bad."""
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
    try:
        frames = decode_video(video_ext, raw[video_ext], max_decoded_bytes)
    except DecodeLimitError as error:
        raise SampleError(VIDEO_TOO_LARGE, f"{video_ext} member: {error}") from None
    except Exception as error:  # PyAV and numpy raise many types on garbage; all mean "undecodable"
        cause = ZERO_FRAMES if "zero frames" in str(error) else VIDEO_DECODE_ERROR
        raise SampleError(cause, f"{video_ext} member: {type(error).__name__}: {error}") from None
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SampleError(VIDEO_DECODE_ERROR, f"{video_ext} member has empty frames {frames.shape}")
    if frames.shape[0] != meta.n_frames:
        raise SampleError(BAD_META, f"json says {meta.n_frames} frames, the {video_ext} member has {frames.shape[0]}")
    return DecodedSample(torch.from_numpy(frames), text, meta, key)


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
