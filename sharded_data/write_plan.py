"""Step 1 of a write: every sample's sample id and sentence id, the shards they go to, and the settings that
decide the bytes on disk. A pure function of the sources and the arguments, so every task of a job array makes
the same plan without talking to the others.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sharded_data.format import DEFAULT_MAX_DECODED_BYTES, normalize_text, shard_name
from sharded_data.sources import VideoSource


@dataclass
class WriteSettings:
    """Everything that decides the shard contents. Two runs with equal settings write the same samples."""

    video_format: str
    samples_per_shard: int
    resize: list[int] | None
    source: str
    skip_bad: bool
    sources: dict[str, str]  # split -> digest of its sources (names, texts, ids, loader fields), in order


@dataclass
class ShardTask:
    """One shard for one worker: the samples it holds, with their planned ids and sentence ids."""

    out_dir: str
    split: str
    number: int
    items: list[tuple[int, int, VideoSource]]  # (planned sample id, sentence id, source)
    video_format: str
    resize: tuple[int, int] | None
    source_tag: str
    skip_bad: bool
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES  # a memory bound, not part of the settings: it decides no byte

    @property
    def name(self) -> str:
        return shard_name(self.split, self.number)


def plan_shards(out_dir: Path, splits: dict[str, list[VideoSource]], sentence_ids: dict[str, list[int]],
                video_format: str, samples_per_shard: int, resize: tuple[int, int] | None, source: str,
                skip_bad: bool, max_decoded_bytes: int) -> list[ShardTask]:
    """Every shard of every split, in order (a task of an array owns the positions p % N == I)."""
    return [
        ShardTask(str(out_dir), split, number, items, video_format, resize, source, skip_bad, max_decoded_bytes)
        for split, sources in splits.items()
        for number, items in enumerate(chunks(
            [(sample_id, sentence_ids[split][sample_id], src) for sample_id, src in enumerate(sources)],
            samples_per_shard))
    ]


def assign_sentence_ids(splits: dict[str, list[VideoSource]]) -> dict[str, list[int]]:
    """One id per distinct normalized text over all splits; ids a source sets itself are kept and shared."""
    by_text: dict[str, int] = {}
    for sources in splits.values():
        for src in sources:
            if src.sentence_id is not None:
                by_text.setdefault(normalize_text(src.text), int(src.sentence_id))
    next_id = max(by_text.values(), default=-1) + 1
    out = {}
    for split, sources in splits.items():
        out[split] = []
        for src in sources:
            if src.sentence_id is not None:
                out[split].append(int(src.sentence_id))
                continue
            text = normalize_text(src.text)
            if text not in by_text:
                by_text[text] = next_id
                next_id += 1
            out[split].append(by_text[text])
    return out


def check_sources(splits: dict[str, list[VideoSource]]) -> None:
    if not splits:
        raise ValueError("no split to write")
    for split, sources in splits.items():
        if not split or not split.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"split name {split!r}: use letters and digits (it becomes part of file names and keys)")
        if not sources:
            raise ValueError(f"split {split!r} has no sample")
        seen: dict[str, int] = {}
        for position, src in enumerate(sources):
            if not isinstance(src, VideoSource):
                raise TypeError(f"split {split!r} item {position}: expected a VideoSource, got {type(src).__name__}")
            if not src.text.strip():
                raise ValueError(f"split {split!r}, sample {src.name!r} ({src.location()}): empty text")
            if src.name in seen:
                raise ValueError(f"split {split!r}: sample name {src.name!r} appears twice "
                                 f"(items {seen[src.name]} and {position}); names must be unique within a split")
            seen[src.name] = position


def digest(sources: list[VideoSource], sentence_ids: list[int]) -> str:
    # A dataclass repr names the class and lists every field (path, pattern, renderer parameters...): what
    # decides the frames. The module is left out: `python -m x` and `import x` name it differently.
    hashed = hashlib.sha256()
    for src, sentence_id in zip(sources, sentence_ids):
        hashed.update(f"{src!r}|{sentence_id}\n".encode("utf-8"))
    return hashed.hexdigest()


def chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]
