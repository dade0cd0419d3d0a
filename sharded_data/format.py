"""The shard format: member names, video encoding, and the per-split index.

One sample per video, stored as WebDataset members that plain `tar` and `webdataset` can read:

    {key}.mp4 | {key}.frames.npy   the video (H.264 mp4, compact; or raw uint8 T x H x W x 3, fastest to read)
    {key}.txt                      the target sentence, UTF-8
    {key}.json                     SampleMeta (sample id, sentence id, signer, frames, fps, source, split, name;
                                   gloss sequence and meaning id where the corpus has them)

A split S of a shard directory is `shards-S-000000.tar`, `shards-S-000001.tar`, ... plus `index-S.json`,
which lists the shards and, per sample, where its members start in its shard. That byte offset is what
random access by sample id (the Pair Selection sampler chooses batch members) needs.
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_FORMATS = ("mp4", "npy")
SIZE_TAG = "scl-slt-size="
VIDEO_EXTENSIONS = {"mp4": "mp4", "npy": "frames.npy"}
INDEX_VERSION = 1


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
        fields = json.loads(data.decode("utf-8"))
        return cls(**{name: fields[name] for name in cls.__dataclass_fields__
                      if name in fields or name not in OPTIONAL_META_FIELDS})


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
        stream.options = {"crf": str(crf), "preset": "veryfast", "bf": "0"}
        # The true size is kept in the container metadata so decode can undo the padding.
        container.metadata["comment"] = f"{SIZE_TAG}{width}x{height}"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_video(extension: str, data: bytes) -> np.ndarray:
    """Decode a video member into uint8 T x H x W x 3. Raises ValueError on anything unreadable."""
    if extension == VIDEO_EXTENSIONS["npy"] or extension == "npy":
        frames = np.load(io.BytesIO(data), allow_pickle=False)
        return check_frames(frames, "frames.npy member")
    if extension == "mp4":
        return check_frames(decode_mp4_bytes(data), "mp4 member")
    raise ValueError(f"unknown video member extension {extension!r}")


def decode_rgb_frames(container, stream) -> list[np.ndarray]:
    """Every frame of `stream` as uint8 H x W x 3 RGB.

    One VideoReformatter for the whole video: `frame.to_ndarray(format="rgb24")` builds a new swscale context
    for every frame, which at 64x64 costs 4x the decoding itself (bit-identical output either way;
    benchmarks/results/data.md).
    """
    from av.video.reformatter import VideoReformatter

    to_rgb = VideoReformatter()
    return [to_rgb.reformat(frame, format="rgb24").to_ndarray() for frame in container.decode(stream)]


def decode_mp4_bytes(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        size = container.metadata.get("comment", "")
        # One decoding thread: this runs inside DataLoader workers that already occupy the cores
        # (codec threads measured 1.45x slower at 64x64, no faster at 224x224).
        decoded = decode_rgb_frames(container, container.streams.video[0])
    if not decoded:
        raise ValueError("mp4 member holds no decodable frame")
    frames = np.stack(decoded)
    if size.startswith(SIZE_TAG):  # undo the even-size padding of _encode_h264
        width, height = (int(side) for side in size[len(SIZE_TAG):].split("x"))
        frames = frames[:, :height, :width]
    return frames


def read_video_file(path: str | os.PathLike) -> np.ndarray:
    """Any video file PyAV can open (mp4, avi, mkv; H.264, MPEG-4 part 2, ...) -> uint8 T x H x W x 3."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = decode_rgb_frames(container, stream)
    if not decoded:
        raise ValueError(f"{path}: no decodable video frame")
    return np.stack(decoded)


# ----------------------------------------------------------------------------------------------- index


@dataclass
class ShardInfo:
    name: str
    num_samples: int


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
        if data.get("version") != INDEX_VERSION:
            raise ValueError(f"{where}: index version {data.get('version')} is not {INDEX_VERSION}; rewrite the shards")
        columns = ("sample_id", "shard", "offset", "size", "sentence_id", "n_frames", "signer", "text")
        lengths = {name: len(data[name]) for name in columns}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{where}: per-sample columns have different lengths {lengths}; the index is corrupt")
        if data["sample_id"] != list(range(len(data["sample_id"]))):
            raise ValueError(f"{where}: sample ids are not 0..N-1 in order; the index is corrupt")
        return cls(
            split=data["split"],
            video_format=data["video_format"],
            shards=[ShardInfo(**info) for info in data["shards"]],
            **{name: data[name] for name in columns},
        )


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
    return ShardIndex.from_dict(data, where=str(path))


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON so that a reader never sees a half-written file (write a temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
