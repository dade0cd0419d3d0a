"""Where the videos come from: one `VideoSource` per sample, and the corpus layouts that produce them.

A `VideoSource` names one sample (name, target sentence, signer) and knows how to load its frames. It
is a plain picklable dataclass, because the writer ships sources to worker processes that load and
encode whole shards. Three layouts are read here:

- a generic manifest (TSV with a header row, or JSONL): split, id, video, text [, signer, sentence_id, fps];
  `video` is a video file PyAV opens or a folder of frame images; relative paths are relative to the
  manifest's folder;
- the PHOENIX-2014T release: `ROOT/features/fullFrame-210x260px/{split}/{name}/*.png` and
  `ROOT/annotations/manual/PHOENIX-2014-T.{split}.corpus.csv` (`name|video|start|end|speaker|orth|translation`);
  the German `translation` is the text, `speaker` the signer, `orth` the gloss sequence (kept as ground truth);
- CSL-Daily: `ROOT/sentence/frames_512x512/{name}/*.jpg`, the split file `ROOT/sentence_label/split_1.txt`
  (`Name|split`), and a label file `name|text|signer` (header row). CSL-Daily ships its labels as a
  pickle (`csl2020ct_v2.pkl`); unpickling runs arbitrary code from the file, so it is read only when the
  caller says it trusts the file (`trust_pickle=True`, `--trust-pickle`). `convert_csl_pickle` turns it
  into the plain label file once.

Every layout error names the file, the line and the fix. Names read from PHOENIX and CSL-Daily annotation
files must stay inside ROOT (no absolute path, no `..`): those files come with the data, not from the user.
(A manifest is the user's own file: its paths may point anywhere, relative or absolute.)

Loading is bounded: the built-in sources refuse a video whose decoded frames would exceed the decode limit
(`decode_limit`, default format.DEFAULT_MAX_DECODED_BYTES) before allocating them, and turn PIL's
DecompressionBombError (not an OSError) into the same ValueError as any other unreadable frame.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Sequence

import numpy as np

from sharded_data.format import DEFAULT_MAX_DECODED_BYTES, check_decoded_size, check_frames, read_video_file

log = logging.getLogger(__name__)

IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg")
MANIFEST_REQUIRED = ("split", "id", "video", "text")
MANIFEST_OPTIONAL = ("signer", "sentence_id", "fps")
PHOENIX_SPLITS = ("train", "dev", "test")
PHOENIX_FRAMES = Path("features") / "fullFrame-210x260px"
PHOENIX_ANNOTATIONS = Path("annotations") / "manual"
PHOENIX_FPS = 25.0
CSL_FRAMES = Path("sentence") / "frames_512x512"
CSL_SPLIT_FILE = Path("sentence_label") / "split_1.txt"
CSL_LABEL_FILE = Path("sentence_label") / "labels.csv"
CSL_PICKLE = Path("sentence_label") / "csl2020ct_v2.pkl"
CSL_FPS = 30.0


class LayoutError(ValueError):
    """A manifest, annotation or split file that cannot be turned into sources (message names file and line)."""


# The decode bound of the built-in sources. Not a dataclass field: a source's repr is the writer's fingerprint of
# the corpus, and a memory bound does not change what a video holds.
_max_decoded_bytes = DEFAULT_MAX_DECODED_BYTES


@contextlib.contextmanager
def decode_limit(max_decoded_bytes: int):
    """Within the block, the built-in sources refuse videos that decode to more than `max_decoded_bytes`."""
    global _max_decoded_bytes
    previous, _max_decoded_bytes = _max_decoded_bytes, int(max_decoded_bytes)
    try:
        yield
    finally:
        _max_decoded_bytes = previous


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class VideoSource:
    """One sample. Subclass and override `load_frames` (the synthetic corpus renders its frames there).

    Subclasses must be dataclasses whose fields say everything that decides the frames, with reprs that are
    the same from run to run (numbers, strings, paths; not objects printed with their memory address): the
    writer fingerprints `repr(source)` to tell a resumable re-run from a different corpus.
    """

    name: str  # unique within its split, e.g. "train/11August_2010_Wednesday_tagesschau-1"
    text: str
    signer: str = "unknown"
    sentence_id: int | None = None  # None: the writer assigns one per distinct normalized text, across splits
    fps: float = 25.0
    gloss: str | None = None  # the signs, space-separated, where the corpus annotates them (PHOENIX `orth`)

    def load_frames(self) -> np.ndarray:
        """uint8 T x H x W x 3. Raise ValueError or OSError naming the file when it cannot be read."""
        raise NotImplementedError(f"{type(self).__name__} must override load_frames()")

    def location(self) -> str:
        """What an error message should point the user at."""
        return self.name

    def ground_truth(self) -> dict:
        """The optional SampleMeta fields this sample sets (the writer stores them in its json member)."""
        return {"gloss": self.gloss} if self.gloss else {}


@dataclass
class VideoFileSource(VideoSource):
    """A video file PyAV opens (mp4, avi, mkv; H.264, MPEG-4 part 2, ...)."""

    path: str = ""

    def load_frames(self) -> np.ndarray:
        try:
            return read_video_file(self.path, _max_decoded_bytes)
        except ValueError:
            raise
        except Exception as error:  # PyAV raises its own error classes (subclasses of OSError/ValueError vary)
            raise ValueError(f"{self.path}: cannot decode video ({type(error).__name__}: {error})") from error

    def location(self) -> str:
        return self.path


@dataclass
class FrameDirectorySource(VideoSource):
    """A folder of frame images, in file-name order (PHOENIX `images0001.png`, CSL-Daily `000000.jpg`)."""

    path: str = ""
    pattern: str = "*.png"

    def frame_files(self) -> list[Path]:
        """The frame images in file-name order (the listing: the video's exact frame count, nothing decoded)."""
        files = sorted(Path(self.path).glob(self.pattern))
        if not files:
            raise ValueError(f"{self.path}: no frame matches {self.pattern!r}")
        return files

    def load_frames(self, positions: Sequence[int] | None = None) -> np.ndarray:
        """All frames (or those at `positions` of the listing, in that order: only those images are decoded) in one
        preallocated array, the whole video's size checked from the first image's header (before any pixel is
        decoded) against the decode limit."""
        from PIL import Image

        listing = self.frame_files()
        files = listing if positions is None else [listing[position] for position in positions]
        frames = None
        for position, file in enumerate(files):
            try:
                with Image.open(file) as image:  # reads the header only; pixels are decoded by convert()
                    if frames is None:
                        width, height = image.size
                        check_decoded_size(len(listing), height, width, _max_decoded_bytes, self.path,
                                           f" ({file.name} and {len(listing) - 1} more images)")
                        frames = np.empty((len(files), height, width, 3), np.uint8)
                    if image.size != (frames.shape[2], frames.shape[1]):
                        raise ValueError(f"{file}: frame size {image.size[::-1]} differs from {files[0].name} "
                                         f"{frames.shape[1:3]}")
                    frames[position] = np.asarray(image.convert("RGB"))
            except Image.DecompressionBombError as error:  # not an OSError: would escape every handler
                raise ValueError(f"{file}: refused as a decompression bomb ({error})") from None
            except OSError as error:
                raise OSError(f"{file}: cannot read frame image ({error})") from error
        return check_frames(frames, self.path)

    def location(self) -> str:
        return self.path


def frame_pattern(folder: Path) -> str | None:
    """The image pattern a frame folder uses (png or jpg), or None if it holds no frame image."""
    for pattern in IMAGE_PATTERNS:
        if next(folder.glob(pattern), None) is not None:
            return pattern
    return None


def source_for_path(path: Path, **fields) -> VideoSource:
    """A file -> VideoFileSource, a folder of images -> FrameDirectorySource. Raises LayoutError otherwise."""
    if path.is_dir():
        pattern = frame_pattern(path)
        if pattern is None:
            raise LayoutError(f"{path}: folder holds no frame image ({', '.join(IMAGE_PATTERNS)})")
        return FrameDirectorySource(path=str(path), pattern=pattern, **fields)
    if path.is_file():
        return VideoFileSource(path=str(path), **fields)
    raise LayoutError(f"{path}: no such video file or frame folder")


# --------------------------------------------------------------------------------------------- manifest


def read_manifest(manifest: str | os.PathLike) -> dict[str, list[VideoSource]]:
    """A TSV (header row) or JSONL manifest -> sources per split, in file order."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise LayoutError(f"{manifest}: manifest not found")
    rows = _jsonl_rows(manifest) if manifest.suffix in (".jsonl", ".json") else _tsv_rows(manifest)
    splits: dict[str, list[VideoSource]] = {}
    for line_number, row in rows:
        where = f"{manifest}:{line_number}"
        missing = [column for column in MANIFEST_REQUIRED if not str(row.get(column) or "").strip()]
        if missing:
            raise LayoutError(
                f"{where}: missing {', '.join(missing)}; every line needs {', '.join(MANIFEST_REQUIRED)} "
                f"(optional: {', '.join(MANIFEST_OPTIONAL)})"
            )
        video = Path(str(row["video"]).strip())
        if not video.is_absolute():
            video = manifest.parent / video
        fields = dict(name=str(row["id"]).strip(), text=str(row["text"]).strip())
        if str(row.get("signer") or "").strip():
            fields["signer"] = str(row["signer"]).strip()
        fields.update(_optional_number(row, "sentence_id", int, where))
        fields.update(_optional_number(row, "fps", float, where))
        try:
            source = source_for_path(video, **fields)
        except LayoutError as error:
            raise LayoutError(f"{where}: {error} (relative paths are relative to {manifest.parent}); "
                              f"fix the path or remove the line") from None
        if isinstance(source, VideoFileSource) and "fps" not in fields:
            source.fps = _container_fps(video, where)
        splits.setdefault(str(row["split"]).strip(), []).append(source)
    if not splits:
        raise LayoutError(f"{manifest}: the manifest lists no sample")
    return splits


def _tsv_rows(manifest: Path):
    with manifest.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [column.strip() for column in next(reader, [])]
        missing = [column for column in MANIFEST_REQUIRED if column not in header]
        if missing:
            raise LayoutError(
                f"{manifest}:1: header lacks column(s) {', '.join(missing)}; the first line must name the "
                f"tab-separated columns {', '.join(MANIFEST_REQUIRED)} (optional: {', '.join(MANIFEST_OPTIONAL)})"
            )
        for line_number, values in enumerate(reader, start=2):
            if not any(value.strip() for value in values):
                continue
            if len(values) > len(header):
                raise LayoutError(f"{manifest}:{line_number}: {len(values)} fields but the header names {len(header)}; "
                                  f"a tab inside a field? Fields are tab-separated without quoting")
            yield line_number, dict(zip(header, values))


def _jsonl_rows(manifest: Path):
    with manifest.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise LayoutError(f"{manifest}:{line_number}: invalid JSON ({error.msg}); one object per line") from None
            if not isinstance(row, dict):
                raise LayoutError(f"{manifest}:{line_number}: expected a JSON object with keys {', '.join(MANIFEST_REQUIRED)}")
            yield line_number, row


def _optional_number(row: dict, column: str, kind, where: str) -> dict:
    value = row.get(column)
    if value is None or str(value).strip() == "":
        return {}
    try:
        return {column: kind(value)}
    except ValueError:
        raise LayoutError(f"{where}: {column} {value!r} is not a {kind.__name__}") from None


def _container_fps(path: Path, where: str) -> float:
    """The frame rate the video file declares (read from its header, no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
    except Exception as error:
        raise LayoutError(f"{where}: {path}: cannot open video ({type(error).__name__}: {error}); "
                          f"fix the file or remove the line") from None
    if not rate:
        raise LayoutError(f"{where}: {path}: the video declares no frame rate; add an fps column")
    return float(rate)


# ------------------------------------------------------------------------------------------ PHOENIX-2014T


def phoenix_sources(root: str | os.PathLike, splits=PHOENIX_SPLITS) -> dict[str, list[VideoSource]]:
    """The PHOENIX-2014T release layout -> sources per split. A split whose corpus CSV is absent is skipped."""
    root = Path(root)
    out: dict[str, list[VideoSource]] = {}
    for split in splits:
        corpus = root / PHOENIX_ANNOTATIONS / f"PHOENIX-2014-T.{split}.corpus.csv"
        if not corpus.is_file():
            log.warning("PHOENIX-2014T: %s is absent; split %s skipped", corpus, split)
            continue
        out[split] = []
        for line_number, row in _pipe_rows(corpus, ("name", "speaker", "translation")):
            where = f"{corpus}:{line_number}"
            name = _inside_root(row["name"], "name", where)
            # The -T release keeps frames in {split}/NAME/; the `video` column (NAME/1/*.png) is the older
            # PHOENIX-2014 layout, accepted too.
            candidates = [root / PHOENIX_FRAMES / split / name]
            if row.get("video", "").strip():
                candidates.append(root / PHOENIX_FRAMES / split / _inside_root(row["video"], "video", where).parent)
            folder = next((c for c in candidates if next(c.glob("*.png"), None) is not None), None)
            if folder is None:
                raise LayoutError(f"{corpus}:{line_number}: frame folder {candidates[0]} is missing or holds no png; "
                                  f"the release keeps frames under ROOT/{PHOENIX_FRAMES}/{split}/NAME/")
            out[split].append(FrameDirectorySource(
                name=f"{split}/{name}", text=row["translation"].strip(), signer=row["speaker"].strip(),
                fps=PHOENIX_FPS, path=str(folder), pattern="*.png", gloss=(row.get("orth") or "").strip() or None))
    if not out:
        raise LayoutError(f"{root}: no PHOENIX-2014T corpus file found under {root / PHOENIX_ANNOTATIONS} "
                          f"(expected PHOENIX-2014-T.{{train,dev,test}}.corpus.csv); is ROOT the release folder?")
    return out


def _inside_root(value: str, column: str, where: str) -> PurePath:
    """A name from an annotation file as a relative path that cannot leave the folder it is joined to."""
    value = value.strip()
    path = PurePath(value)
    if not path.parts or path.is_absolute() or ".." in path.parts or "\\" in value:  # "" has no parts
        raise LayoutError(f"{where}: {column} {value!r} is not a plain name inside ROOT (absolute paths and '..' are "
                          f"refused: an annotation file must not make the writer read outside the corpus); fix the line")
    return path


def _pipe_rows(path: Path, required: tuple[str, ...]):
    """Rows of a `|`-separated file with a header row, as (line number, dict); checks the required columns."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        header = [column.strip() for column in next(reader, [])]
        lowered = [column.lower() for column in header]
        missing = [column for column in required if column.lower() not in lowered]
        if missing:
            raise LayoutError(f"{path}:1: header {'|'.join(header) or '(empty)'} lacks {', '.join(missing)}; "
                              f"the first line must name the |-separated columns")
        for line_number, values in enumerate(reader, start=2):
            if not any(value.strip() for value in values):
                continue
            if len(values) != len(header):
                raise LayoutError(f"{path}:{line_number}: {len(values)} fields, the header names {len(header)}; "
                                  f"fields are |-separated and may not contain '|'")
            yield line_number, dict(zip(lowered, values))


# ---------------------------------------------------------------------------------------------- CSL-Daily


def csl_daily_sources(root: str | os.PathLike, labels: str | os.PathLike | None = None,
                      trust_pickle: bool = False, fps: float = CSL_FPS) -> dict[str, list[VideoSource]]:
    """The CSL-Daily layout -> sources per split (split names from the split file: train/dev/test).

    Labels: `labels` (default ROOT/sentence_label/labels.csv, `name|text|signer` with a header), or, only
    with trust_pickle=True, the shipped pickle ROOT/sentence_label/csl2020ct_v2.pkl.
    """
    root = Path(root)
    label_rows = _csl_labels(root, labels, trust_pickle)
    split_file = root / CSL_SPLIT_FILE
    if not split_file.is_file():
        raise LayoutError(f"{split_file}: CSL-Daily split file missing (lines `name|split`, header `Name|split`)")
    out: dict[str, list[VideoSource]] = {}
    for line_number, row in _pipe_rows(split_file, ("name", "split")):
        name = str(_inside_root(row["name"], "name", f"{split_file}:{line_number}"))
        if name not in label_rows:
            raise LayoutError(f"{split_file}:{line_number}: {name} has no label in {label_rows.origin}; "
                              f"add a line `{name}|TEXT|SIGNER` or remove it from the split file")
        folder = root / CSL_FRAMES / name
        if not folder.is_dir():
            raise LayoutError(f"{split_file}:{line_number}: frame folder {folder} is missing; "
                              f"CSL-Daily keeps frames under ROOT/{CSL_FRAMES}/NAME/")
        text, signer = label_rows[name]
        out.setdefault(row["split"].strip(), []).append(FrameDirectorySource(
            name=name, text=text, signer=signer, fps=fps, path=str(folder), pattern=frame_pattern(folder) or "*.jpg"))
    if not out:
        raise LayoutError(f"{split_file}: lists no sample")
    return out


class _Labels(dict):
    origin: str = ""


def _csl_labels(root: Path, labels: str | os.PathLike | None, trust_pickle: bool) -> _Labels:
    path = Path(labels) if labels is not None else root / CSL_LABEL_FILE
    out = _Labels()
    if path.suffix == ".pkl" or (labels is None and not path.is_file() and (root / CSL_PICKLE).is_file()):
        pickle_path = path if path.suffix == ".pkl" else root / CSL_PICKLE
        if not trust_pickle:
            raise LayoutError(
                f"{pickle_path}: labels are a pickle, and unpickling runs code from the file. Either convert it once "
                f"(`python -m sharded_data.write --csl-daily ROOT --convert-labels --trust-pickle` writes {root / CSL_LABEL_FILE}) "
                f"or pass --trust-pickle if you trust this file"
            )
        out.update(_csl_pickle_labels(pickle_path))
        out.origin = str(pickle_path)
        return out
    if not path.is_file():
        raise LayoutError(f"{path}: CSL-Daily label file missing; write `name|text|signer` lines with that header, "
                          f"or convert the shipped {CSL_PICKLE} (see --trust-pickle)")
    for line_number, row in _pipe_rows(path, ("name", "text", "signer")):
        if not row["text"].strip():
            raise LayoutError(f"{path}:{line_number}: empty text for {row['name']}")
        out[row["name"].strip()] = (row["text"].strip(), row["signer"].strip() or "unknown")
    out.origin = str(path)
    return out


def _csl_pickle_labels(path: Path) -> dict[str, tuple[str, str]]:
    """The shipped pickle: {"info": [{"name", "label_word" or "label_char", "signer", ...}, ...], ...}."""
    import pickle

    with path.open("rb") as handle:
        data = pickle.load(handle)  # the caller passed trust_pickle=True
    entries = data.get("info") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise LayoutError(f"{path}: expected a dict with an 'info' list of per-video entries")
    labels = {}
    for position, entry in enumerate(entries):
        words = entry.get("label_word") or entry.get("label_char")
        if "name" not in entry or not words:
            raise LayoutError(f"{path}: info[{position}] lacks 'name' or 'label_word'/'label_char'")
        text = "".join(words) if isinstance(words, (list, tuple)) else str(words)
        labels[str(entry["name"])] = (text, str(entry.get("signer", "unknown")))
    return labels


def convert_csl_pickle(pickle_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write the plain `name|text|signer` label file from the shipped pickle (trusted). Returns the line count."""
    labels = _csl_pickle_labels(Path(pickle_path))
    lines = ["name|text|signer"] + [f"{name}|{text}|{signer}" for name, (text, signer) in sorted(labels.items())]
    Path(out_path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(labels)
