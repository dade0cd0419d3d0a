"""The shard format: member names, video encoding, and the per-split index.

One sample per video, stored as WebDataset members that plain `tar` and `webdataset` can read:

    {key}.mp4 | {key}.frames.npy   the video (H.264 mp4, compact; or raw uint8 T x H x W x 3, fastest to read)
    {key}.txt                      the target sentence, UTF-8
    {key}.json                     SampleMeta (sample id, sentence id, signer, frames, fps, source, split, name;
                                   gloss sequence and meaning id where the corpus has them)

A split S of a shard directory is `shards-S-000000.tar`, `shards-S-000001.tar`, ... plus `index-S.json`,
which lists the shards (name, samples, bytes, SHA-256) and, per sample, where its members start in its shard.
That byte offset is what random access by sample id (the Pair Selection sampler chooses batch members) needs.

Nothing read here is trusted further than it can be checked (shards come from disks, copies and other people):
- a shard name in an index is a plain file name inside the shard directory (never a path or a `pipe:` URL);
- per-sample json is type- and range-checked (`SampleMeta.from_json_bytes`);
- a video is never decoded into more than `max_decoded_bytes` (default DEFAULT_MAX_DECODED_BYTES): the size is
  checked from the container's or the npy header's claims before anything is allocated, and again while
  frames are decoded one by one (claims can lie). A decode holds at most about twice that bound at its peak
  (the decoded frames and their stacked copy).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

VIDEO_FORMATS = ("mp4", "npy")
SIZE_TAG = "scl-slt-size="
VIDEO_EXTENSIONS = {"mp4": "mp4", "npy": "frames.npy"}
INDEX_VERSION = 2  # 2: shards carry their size and SHA-256. Version 1 indexes (without them) are still read.
READABLE_INDEX_VERSIONS = (1, 2)
# A shard named in an index must be a plain file name: webdataset opens `pipe:CMD` as a shell command and
# `http://...` as a download, and a path with a separator could point anywhere.
SHARD_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.tar$")

# Decoded video bound (uint8 T x H x W x 3, plus a per-frame allowance for the Python objects around each
# frame). 2 GiB holds 3,000 PHOENIX frames (210x260) or 2,700 CSL-Daily frames (512x512), ~10x the longest
# video of either corpus, and refuses a 1080p video longer than ~5 minutes at 25 fps. Raise it with
# `--max-decoded-gib` (writer) or ReaderConfig.max_decoded_bytes for corpora of long high-resolution videos.
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3
FRAME_OVERHEAD_BYTES = 512

logger = logging.getLogger("sharded_data")


class DecodeLimitError(ValueError):
    """A video that would decode to more bytes than allowed (refused before its frames are allocated)."""


def decoded_bytes(num_frames: int, height: int, width: int) -> int:
    """Bytes that num_frames RGB frames of height x width take once decoded (what the bound counts)."""
    return int(num_frames) * (int(height) * int(width) * 3 + FRAME_OVERHEAD_BYTES)


def check_decoded_size(num_frames: int, height: int, width: int, max_bytes: int, where: str, claim: str = "") -> None:
    """Raise DecodeLimitError when num_frames x height x width RGB frames would exceed max_bytes."""
    if min(num_frames, height, width) < 0:
        raise ValueError(f"{where}: negative video size {num_frames} x {height} x {width}{claim}")
    needed = decoded_bytes(num_frames, height, width)
    if needed > max_bytes:
        raise DecodeLimitError(
            f"{where}: {num_frames} frames of {height}x{width}{claim} would take {needed / 2**20:.0f} MiB decoded, "
            f"more than the {max_bytes / 2**20:.0f} MiB allowed; a video this large is damaged or hostile, or needs "
            f"a higher limit (--max-decoded-gib when writing, ReaderConfig.max_decoded_bytes when reading)"
        )


def sample_key(split: str, sample_id: int) -> str:
    # No dots: WebDataset splits a member name at the first dot into key and extension.
    return f"{split}_{sample_id:08d}"


def shard_name(split: str, shard_number: int) -> str:
    return f"shards-{split}-{shard_number:06d}.tar"


def index_path(shard_dir: str | os.PathLike, split: str) -> Path:
    return Path(shard_dir) / f"index-{split}.json"


def corpus_path(shard_dir: str | os.PathLike) -> Path:
    return Path(shard_dir) / "corpus.json"


def normalize_text(text: str) -> str:
    """The form under which two sentences count as the same (same sentence id): case and spacing folded."""
    return re.sub(r"\s+", " ", text.strip().lower())


# Ground truth a corpus may annotate per sample (json member only when set, so corpora without it keep
# their bytes): the gloss sequence (PHOENIX-2014T `orth`, the synthetic corpus's signs, space-separated)
# and the synthetic corpus's meaning id (two samples with one meaning say the same thing).
OPTIONAL_META_FIELDS = ("gloss", "meaning_id")


@dataclass
class SampleMeta:
    sample_id: int
    sentence_id: int
    signer: str
    n_frames: int
    fps: float
    source: str
    split: str
    name: str
    gloss: str | None = None
    meaning_id: int | None = None

    def to_json_bytes(self) -> bytes:
        fields = {name: value for name, value in asdict(self).items()
                  if not (name in OPTIONAL_META_FIELDS and value is None)}
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "SampleMeta":
        """Parse and validate a json member; ValueError naming the field when a type or range is wrong.

        A shard is data, not code we wrote: `sample_id="x"`, `sentence_id=[1]` or `n_frames=-5` would otherwise
        crash a collate hours into a run, or silently pair a video with another sentence's id.
        """
        fields = json.loads(data.decode("utf-8"))
        if not isinstance(fields, dict):
            raise ValueError(f"expected a JSON object, got {type(fields).__name__}")
        missing = [name for name in cls.__dataclass_fields__ if name not in fields and name not in OPTIONAL_META_FIELDS]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        meta = cls(**{name: fields[name] for name in cls.__dataclass_fields__ if name in fields})
        meta.validate()
        return meta

    def validate(self) -> None:
        for name in ("sample_id", "sentence_id", "n_frames"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be at least 1, got {self.n_frames!r}")
        if not _is_number(self.fps) or not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        for name in ("signer", "source", "split", "name"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.gloss is not None and not isinstance(self.gloss, str):
            raise ValueError(f"gloss must be a string or absent, got {self.gloss!r}")
        if self.meaning_id is not None and (not _is_int(self.meaning_id) or self.meaning_id < 0):
            raise ValueError(f"meaning_id must be a non-negative integer or absent, got {self.meaning_id!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------- video codec


def check_frames(frames: np.ndarray, where: str = "video") -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"{where}: expected uint8 frames of shape T x H x W x 3, got {dtype} {shape}")
    if frames.shape[0] == 0:
        raise ValueError(f"{where}: the video has zero frames")
    return frames


def encode_video(frames: np.ndarray, video_format: str, fps: float = 25.0, crf: int = 18) -> tuple[str, bytes]:
    """Encode uint8 T x H x W x 3 frames; returns (member extension, bytes)."""
    frames = check_frames(frames)
    if video_format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
        return VIDEO_EXTENSIONS["npy"], buffer.getvalue()
    if video_format == "mp4":
        return VIDEO_EXTENSIONS["mp4"], _encode_h264(frames, fps, crf)
    raise ValueError(f"unknown video format {video_format!r}; choose one of {VIDEO_FORMATS}")


H264_OPTIONS = {"crf": "18", "preset": "veryfast", "bf": "0", "x264-params": "cabac=0:threads=1:mbtree=0"}
"""The writer's x264 settings (why each: in `_encode_h264`); benchmarks/bench_data.py times them."""


def _encode_h264(frames: np.ndarray, fps: float, crf: int) -> bytes:
    import av  # imported here: the npy path and the index tools need no codec library

    _, height, width, _ = frames.shape
    # yuv420p (what every player and decoder expects) needs even sides: pad by one edge pixel if odd.
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Sign videos are short: no B-frame reordering keeps decode simple; crf 18 is visually lossless.
        # cabac=0 (CAVLC entropy coding): ~1.4x faster to decode at 224 px for ~5% more bytes and the same
        # pixels; decoding is what feeds the GPUs (benchmarks/results/data.md, "Feeding a GPU").
        # Byte-identical output in every process: mbtree=0, because x264's macroblock-tree rate control (its
        # SIMD lookahead) reads memory it never wrote, so the bytes depended on what the process had freed
        # before (~2% of clips differed between writer processes; tests/test_video_codec_determinism.py
        # fills freed memory with NaN bytes to show it). threads=1: one encoder per writer worker keeps the
        # cores busy anyway, and a single-threaded encoder does not depend on scheduling.
        stream.options = {**H264_OPTIONS, "crf": str(crf)}
        # The true size is kept in the container metadata so decode can undo the padding.
        container.metadata["comment"] = f"{SIZE_TAG}{width}x{height}"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


class MemoryFile:
    """A read-only file over a buffer (bytes, bytearray, memoryview): `tarfile` and numpy's header readers walk it
    without copying what they skip, where io.BytesIO(memoryview) would copy the whole buffer first."""

    def __init__(self, buffer) -> None:
        self.view = memoryview(buffer).cast("B")
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size is None or size < 0 else min(len(self.view), self.position + size)
        data = bytes(self.view[self.position : end])
        self.position = max(self.position, end)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def decode_video(extension: str, data: bytes, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Decode a video member into uint8 T x H x W x 3. Raises ValueError on anything unreadable, and
    DecodeLimitError (a ValueError) when it would decode to more than `max_decoded_bytes`."""
    frames, _, _ = decode_video_frames(extension, data, None, max_decoded_bytes)
    return frames


def decode_video_frames(extension: str, data, keep: Sequence[int] | None,
                        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> tuple[np.ndarray, int, list[int] | None]:
    """(frames, the number of frames the member holds, which frames `frames` holds: None = every one, in order).

    Without `keep`: every frame, in a new array. With `keep` (the frames needed, sorted, distinct): only those are
    decoded (H.264: every frame is decoded, as P-frames need their predecessors, but only the kept ones are
    converted to RGB); an npy member in a writable buffer is not copied at all (a view of every frame: the
    caller picks its frames when it copies them into a batch), one in an immutable buffer has the kept frames
    copied out. Positions at or past the end are left out: the caller compares the count with what it expected.
    Errors as `decode_video`; the decode-size bound applies to the whole video, kept or not."""
    if extension == VIDEO_EXTENSIONS["npy"] or extension == "npy":
        frames, total, rows = load_npy_frames_selected(data, keep, max_decoded_bytes)
        where = "frames.npy member"
    elif extension == "mp4":
        frames, total = decode_mp4_bytes_selected(data, keep, max_decoded_bytes)
        rows = None if keep is None else [position for position in keep if position < total]
        if total == 0:
            raise ValueError("mp4 member holds no decodable frame")
        where = "mp4 member"
    else:
        raise ValueError(f"unknown video member extension {extension!r}")
    if keep is None or total == 0 or len(frames):  # (kept frames all past the end: the caller's count check says so)
        check_frames(frames, where)
    return frames, total, rows


def load_npy_frames(data: bytes, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """A raw `.frames.npy` member, with its header checked before any allocation.

    np.load allocates the shape its header claims before reading the data, so a 100-byte member claiming
    10^5 frames of 1080p would allocate ~600 GiB. Here the shape, dtype and data length are checked first.
    """
    frames, _, _ = load_npy_frames_selected(data, None, max_decoded_bytes)
    return frames


def load_npy_frames_selected(data, keep: Sequence[int] | None, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
                             ) -> tuple[np.ndarray, int, list[int] | None]:
    """(frames, the header's frame count, which frames they are: None = every one). Without `keep`, a writable
    C-ordered copy of every frame; with it, a view of the member's bytes when they are writable (nothing copied),
    else a copy of the kept frames."""
    from numpy.lib import format as npy

    buffer = MemoryFile(data)
    version = npy.read_magic(buffer)
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"npy format version {version} is not supported (expected 1.0 or 2.0)")
    shape, fortran_order, dtype = readers[version](buffer)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape T x H x W x 3, the header says {dtype} {shape}")
    check_decoded_size(shape[0], shape[1], shape[2], max_decoded_bytes, "frames.npy member", " (npy header)")
    start, count = buffer.tell(), math.prod(shape)
    if len(buffer.view) - start != count:
        raise ValueError(f"the header says {count} bytes of frames, the member holds {len(buffer.view) - start}")
    frames = np.frombuffer(buffer.view, dtype=np.uint8, count=count, offset=start)
    frames = frames.reshape(shape, order="F" if fortran_order else "C")
    if keep is None:
        return frames.copy(), shape[0], None  # writable, C-ordered
    if frames.flags.writeable and frames.flags.c_contiguous:
        return frames, shape[0], None
    rows = [position for position in keep if position < shape[0]]
    return np.ascontiguousarray(frames[np.asarray(rows, dtype=np.int64)]), shape[0], rows  # the kept frames only


def decode_rgb_frames(container, stream, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                      where: str = "video") -> np.ndarray:
    """Every frame of `stream` as uint8 T x H x W x 3 RGB, within `max_decoded_bytes`.

    The size the container claims (frame count, or duration x rate, times the frame size) is checked before
    decoding; then frames are decoded one at a time and counted, so a container that understates its length
    is stopped as soon as it passes the bound, never after.

    One VideoReformatter for the whole video: `frame.to_ndarray(format="rgb24")` builds a new swscale context
    for every frame, which at 64x64 costs 4x the decoding itself (bit-identical output either way;
    benchmarks/results/data.md).
    """
    frames, _ = decode_selected_rgb_frames(container, stream, None, max_decoded_bytes, where)
    return frames


def decode_selected_rgb_frames(container, stream, keep: Sequence[int] | None,
                               max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                               where: str = "video") -> tuple[np.ndarray, int]:
    """(the frames at positions `keep` (None: all) as uint8 K x H x W x 3 RGB, the number of frames decoded).

    Every frame is decoded (and counted against the bound, as in `decode_rgb_frames`); only the kept ones are
    converted to RGB (~40% of the cost of decoding and converting at 224 px). Each converted frame is written
    straight into one array as it comes: collecting them for a final np.stack costs a second copy and keeps
    every decoder buffer alive (2,250 -> 3,150 frames per core-second at 224 px, 117-frame clips)."""
    from av.video.reformatter import VideoReformatter

    height, width = stream.codec_context.height, stream.codec_context.width
    claimed = claimed_frame_count(container, stream)
    check_decoded_size(claimed, height, width, max_decoded_bytes, where, " (container metadata)")
    wanted = None if keep is None else set(keep)
    capacity = len(wanted) if wanted is not None else claimed  # a claim can be low: the array grows then
    to_rgb = VideoReformatter()
    frames, count, used, position = None, 0, 0, 0
    for position, frame in enumerate(container.decode(stream), start=1):
        used += decoded_bytes(1, frame.height, frame.width)
        if used > max_decoded_bytes:
            check_decoded_size(position, frame.height, frame.width, max_decoded_bytes, where,
                               f" (decoded so far; the container claimed {claimed})")
        if wanted is not None and position - 1 not in wanted:
            continue
        rgb = to_rgb.reformat(frame, format="rgb24").to_ndarray()
        if frames is None:
            frames = np.empty((max(1, capacity), *rgb.shape), dtype=np.uint8)
        elif count == len(frames):
            grown = np.empty((2 * count, *frames.shape[1:]), dtype=np.uint8)
            grown[:count] = frames
            frames = grown
        if rgb.shape != frames.shape[1:]:
            raise ValueError(f"{where}: frame {position - 1} is {rgb.shape[:2]}, the first kept one {frames.shape[1:3]}")
        frames[count] = rgb
        count += 1
    if frames is None:
        return np.zeros((0, height, width, 3), dtype=np.uint8), position
    return frames[:count], position


def claimed_frame_count(container, stream) -> int:
    """Frames the container says the stream has (its frame count, else duration x frame rate; 0 if silent)."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if rate and stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if rate and container.duration:
        return int(container.duration / 1_000_000 * rate)  # container.duration is in microseconds
    return 0


def decode_mp4_bytes(data: bytes, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    frames, total = decode_mp4_bytes_selected(data, None, max_decoded_bytes)
    if total == 0:
        raise ValueError("mp4 member holds no decodable frame")
    return frames


def decode_mp4_bytes_selected(data: bytes, keep: Sequence[int] | None,
                              max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """(the kept frames of an mp4 member written by `_encode_h264`, its frame count)."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        size = container.metadata.get("comment", "")
        stream = container.streams.video[0]
        # One decoding thread: this runs inside DataLoader workers that already occupy the cores
        # (codec threads measured 1.45x slower at 64x64, no faster at 224x224).
        frames, total = decode_selected_rgb_frames(container, stream, keep, max_decoded_bytes, "mp4 member")
    if size.startswith(SIZE_TAG):  # undo the even-size padding of _encode_h264
        width, height = (int(side) for side in size[len(SIZE_TAG):].split("x"))
        frames = frames[:, :height, :width]
    return frames, total


# Files whose container claimed another frame count than they hold, found while choosing frames before decoding
# (`read_video_file` with `frame_indices`): each was decoded again in full, within the bound. Per process.
frame_count_fallbacks = 0


def read_video_file(path: str | os.PathLike, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                    frame_indices: Callable[[int], Sequence[int]] | None = None) -> np.ndarray:
    """Any video file PyAV can open (mp4, avi, mkv; H.264, MPEG-4 part 2, ...) -> uint8 T x H x W x 3.

    `frame_indices(num_frames)`: return only those frames, in that order, converting only those to RGB; the
    count is the container's claim. Containers can be wrong about it (edit lists, variable frame rate, a count
    estimated from the duration): when the decoded count differs, the file is decoded again in full and the frames
    are chosen from the true count (`frame_indices` is then called a second time), logged and counted in
    `frame_count_fallbacks`. The result is the same as decoding everything and choosing afterwards."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        claimed = claimed_frame_count(container, stream)
        if frame_indices is None or claimed <= 0:
            decoded = decode_rgb_frames(container, stream, max_decoded_bytes, str(path))
            positions, total = None, len(decoded)
        else:
            keep, positions = np.unique(np.asarray(frame_indices(claimed), dtype=np.int64), return_inverse=True)
            decoded, total = decode_selected_rgb_frames(container, stream, keep.tolist(), max_decoded_bytes, str(path))
    if total == 0:
        raise ValueError(f"{path}: no decodable video frame")
    if positions is not None and total != claimed:
        global frame_count_fallbacks
        frame_count_fallbacks += 1
        logger.warning("%s: the container claims %d frames, it holds %d; decoding it again to choose frames from "
                       "the true count", path, claimed, total)
        return read_video_file(path, max_decoded_bytes)[np.asarray(frame_indices(total), dtype=np.int64)]
    if frame_indices is None:
        return decoded
    return decoded[positions] if positions is not None else decoded[np.asarray(frame_indices(total), dtype=np.int64)]


# ----------------------------------------------------------------------------------------------- index


@dataclass
class ShardInfo:
    name: str
    num_samples: int
    bytes: int | None = None  # size of the tar; None in version-1 indexes
    sha256: str | None = None  # of the tar's bytes; checked by `inspect --check` and by a resumed write

    def __post_init__(self) -> None:
        check_shard_name(self.name)


@dataclass
class ShardIndex:
    """What a reader needs to stream a split or fetch one sample by id without scanning the tars.

    Per-sample columns are parallel lists, ordered by sample id (sample_id[i] == i).
    """

    split: str
    video_format: str
    shards: list[ShardInfo]
    sample_id: list[int] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)  # position in `shards`
    offset: list[int] = field(default_factory=list)  # byte offset of the sample's first tar header
    size: list[int] = field(default_factory=list)  # bytes spanned by its members, headers included
    sentence_id: list[int] = field(default_factory=list)
    n_frames: list[int] = field(default_factory=list)
    signer: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    version: int = INDEX_VERSION

    @property
    def num_samples(self) -> int:
        return len(self.sample_id)

    def shard_paths(self, shard_dir: str | os.PathLike) -> list[str]:
        return [str(Path(shard_dir) / info.name) for info in self.shards]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["num_samples"] = self.num_samples
        return out

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "index") -> "ShardIndex":
        if not isinstance(data, dict) or data.get("version") not in READABLE_INDEX_VERSIONS:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"{where}: index version {version} is not one of {READABLE_INDEX_VERSIONS}; rewrite the shards")
        columns = ("sample_id", "shard", "offset", "size", "sentence_id", "n_frames", "signer", "text")
        absent = [name for name in ("split", "video_format", "shards", *columns) if name not in data]
        if absent:
            raise ValueError(f"{where}: missing {', '.join(absent)}; the index is corrupt, rewrite the shards")
        if not all(isinstance(data[name], list) for name in ("shards", *columns)):
            raise ValueError(f"{where}: shards and per-sample columns must be lists; the index is corrupt")
        lengths = {name: len(data[name]) for name in columns}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{where}: per-sample columns have different lengths {lengths}; the index is corrupt")
        if data["sample_id"] != list(range(len(data["sample_id"]))):
            raise ValueError(f"{where}: sample ids are not 0..N-1 in order; the index is corrupt")
        try:
            shards = [ShardInfo(**info) for info in data["shards"]]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
        for name in ("shard", "offset", "size", "sentence_id", "n_frames"):
            if not all(_is_int(value) and value >= 0 for value in data[name]):
                raise ValueError(f"{where}: column {name} holds a value that is not a non-negative integer; "
                                 f"the index is corrupt, rewrite the shards")
        if any(position >= len(shards) for position in data["shard"]):
            raise ValueError(f"{where}: a sample points at a shard the index does not list; the index is corrupt")
        return cls(split=data["split"], video_format=data["video_format"], shards=shards,
                   **{name: data[name] for name in columns})

    def shard_end(self) -> list[int]:
        """Per shard, the byte where its last indexed sample ends (a shard shorter than this is truncated)."""
        ends = [0] * len(self.shards)
        for shard, offset, size in zip(self.shard, self.offset, self.size):
            ends[shard] = max(ends[shard], offset + size)
        return ends


def load_index(shard_dir: str | os.PathLike, split: str) -> ShardIndex:
    path = index_path(shard_dir, split)
    if not path.exists():
        available = sorted(p.name for p in Path(shard_dir).glob("index-*.json")) if Path(shard_dir).is_dir() else []
        raise FileNotFoundError(
            f"{path}: no index for split {split!r} (found: {available or 'none'}). "
            f"Write shards with `python -m sharded_data.write` or `python -m sharded_data.synth`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); rewrite the shards") from error
    index = ShardIndex.from_dict(data, where=str(path))
    if index.split != split:
        raise ValueError(f"{path}: holds split {index.split!r}, not {split!r}; the index is corrupt, rewrite the shards")
    return index


class ShardFilesError(FileNotFoundError):
    """Indexed shards that are missing or shorter than the index says: an error before any compute, never a
    quiet loss of samples (which would, e.g., score dev BLEU on a subset)."""


def check_shard_name(name: str) -> None:
    if not isinstance(name, str) or not SHARD_FILE_NAME.match(name):
        raise ValueError(f"shard name {name!r} is not a plain file name ending in .tar (no path, no URL such as "
                         f"pipe:...); an index may only name shards inside its own directory")


def verify_shard_files(shard_dir: str | os.PathLike, index: ShardIndex) -> None:
    """Every shard of the index exists and has its recorded size (or, for version-1 indexes, reaches the end of
    its last sample). Raises ShardFilesError listing every bad one. Sizes only: checksums are `inspect --check`'s."""
    problems = []
    for info, end in zip(index.shards, index.shard_end()):
        path = Path(shard_dir) / info.name
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        if size is None:
            problems.append(f"{info.name}: missing")
        elif info.bytes is not None and size != info.bytes:
            problems.append(f"{info.name}: {size} bytes, the index records {info.bytes}")
        elif size < end:
            problems.append(f"{info.name}: {size} bytes, its samples reach byte {end}")
    if problems:
        listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ShardFilesError(
            f"{shard_dir} split {index.split!r}: {len(problems)} of {len(index.shards)} shards are missing or have the "
            f"wrong size ({listed}). Copy them again from the original, or rewrite the corpus (a write re-run into its "
            f"folder redoes damaged shards); `python -m sharded_data.inspect {shard_dir} --check` lists every problem"
        )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a directory's entries (a rename is durable only once its directory is synced), to disk.
    File systems that cannot sync a directory (some FUSE and network mounts say EINVAL) are left as they are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF) or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON so that a reader never sees a half-written file, and a crash right after never loses it
    (temporary file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, ensure_ascii=False, indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
