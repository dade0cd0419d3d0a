"""Look at a shard folder: counts, durations, signers, distinct sentences, a few samples; `--check` validates.

    python -m sharded_data.inspect DIR [--split S] [--samples N] [--check]
    python -m sharded_data.inspect DIR --pairs [--split S]     # pair statistics (sharded_data.pair_stats)

`--check` compares every shard's size and SHA-256 with the index, reads every shard member by member, decodes
every video, and compares what it finds with the index (keys, byte offsets, sizes, frame counts, texts, sentence
ids). It lists each problem as (shard, key, cause; key "-" for the whole shard) and exits with code 1 if there is
any. It trusts nothing it reads: a member whose header claims more bytes than the shard holds is reported, not
read, and videos are decoded within the decode limit (format.DEFAULT_MAX_DECODED_BYTES).
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sharded_data.format import (
    SampleMeta,
    ShardIndex,
    ShardInfo,
    corpus_path,
    decode_video,
    file_sha256,
    load_index,
    sample_key,
)


@dataclass
class BadSample:
    shard: str
    key: str
    cause: str

    def __str__(self) -> str:
        return f"{self.shard}  {self.key}  {self.cause}"


def available_splits(shard_dir: str | Path) -> list[str]:
    corpus = read_corpus(shard_dir)
    found = sorted(path.name[len("index-"):-len(".json")] for path in Path(shard_dir).glob("index-*.json"))
    ordered = [split for split in corpus.get("splits", []) if split in found]
    return ordered + [split for split in found if split not in ordered]


def read_corpus(shard_dir: str | Path) -> dict:
    path = corpus_path(shard_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def summarize_split(shard_dir: str | Path, split: str, num_examples: int = 3) -> dict:
    """Counts and statistics of one split, from its index (no tar is read)."""
    index = load_index(shard_dir, split)
    fps = read_corpus(shard_dir).get("fps")
    frames = index.n_frames
    summary = dict(
        split=split,
        samples=index.num_samples,
        shards=len(index.shards),
        video_format=index.video_format,
        frames=sum(frames),
        frames_min=min(frames, default=0),
        frames_mean=round(sum(frames) / max(len(frames), 1), 1),
        frames_max=max(frames, default=0),
        signers=dict(Counter(index.signer).most_common()),
        distinct_sentences=len(set(index.sentence_id)),
        bytes=sum(index.size),
        examples=[dict(key=sample_key(split, i), signer=index.signer[i], n_frames=frames[i],
                       sentence_id=index.sentence_id[i], text=index.text[i])
                  for i in range(min(num_examples, index.num_samples))],
    )
    if fps:  # durations need one frame rate; corpora with mixed rates keep theirs per sample (json member)
        summary.update(fps=fps, hours=round(sum(frames) / fps / 3600, 3),
                       seconds_mean=round(summary["frames_mean"] / fps, 2), seconds_max=round(max(frames, default=0) / fps, 2))
    return summary


def check_split(shard_dir: str | Path, split: str) -> list[BadSample]:
    """Decode every sample of the split and compare it with the index. Returns the bad ones."""
    index = load_index(shard_dir, split)
    bad: list[BadSample] = []
    for shard_position, info in enumerate(index.shards):
        expected = {sample_key(split, i): i for i, s in enumerate(index.shard) if s == shard_position}
        problem = _check_shard_file(Path(shard_dir) / info.name, info)
        if problem:
            bad.append(BadSample(info.name, "-", problem))
        found = _check_shard(Path(shard_dir) / info.name, split, index, expected, bad)
        for key in sorted(set(expected) - found):
            bad.append(BadSample(info.name, key, "listed in the index but not found in the shard"))
        if len(expected) != info.num_samples:
            bad.append(BadSample(info.name, "-", f"index lists {info.num_samples} samples for this shard "
                                                 f"but assigns {len(expected)}"))
    return bad


def _check_shard_file(path: Path, info: ShardInfo) -> str | None:
    """The whole shard against its index entry: present, of the recorded size, with the recorded SHA-256."""
    if not path.is_file():
        return "shard file missing"
    size = path.stat().st_size
    if info.bytes is not None and size != info.bytes:
        return f"shard is {size} bytes, the index records {info.bytes}"
    if info.sha256 and file_sha256(path) != info.sha256:
        return "shard's SHA-256 differs from the index's (damaged or replaced after it was written)"
    return None


def _check_shard(path: Path, split: str, index: ShardIndex, expected: dict[str, int], bad: list[BadSample]) -> set[str]:
    """Walk one tar member by member; add what is wrong to `bad`; return the keys seen complete."""
    groups: dict[str, dict[str, tuple[int, int, bytes]]] = {}
    order: list[str] = []
    if not path.is_file():
        return set()  # reported by _check_shard_file
    file_size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if member.offset_data + member.size > file_size:  # a header may claim a TiB: never read it
                    bad.append(BadSample(path.name, key, f"member {member.name} claims {member.size} bytes, past the "
                                                         f"end of the {file_size}-byte shard"))
                    break
                if key not in groups:
                    groups[key], order = {}, order + [key]
                data = tar.extractfile(member).read() if member.isfile() else b""
                groups[key][extension] = (member.offset, member.offset_data + member.size, data)
    except (tarfile.TarError, EOFError, OSError) as error:
        bad.append(BadSample(path.name, order[-1] if order else "-", f"unreadable tar ({type(error).__name__}: {error})"))
        if order:  # the last group may be cut short; its members are not all there
            groups.pop(order.pop())
    seen = set()
    for key in order:
        members = groups[key]
        cause = _check_sample(split, key, members, index, expected)
        if cause:
            bad.append(BadSample(path.name, key, cause))
        seen.add(key)
    return seen


def _check_sample(split: str, key: str, members: dict, index: ShardIndex, expected: dict[str, int]) -> str | None:
    if key not in expected:
        return "in the shard but not listed for it in the index"
    sample_id = expected[key]
    videos = [extension for extension in members if extension in ("mp4", "frames.npy")]
    missing = [name for name, present in (("video", videos), ("txt", "txt" in members), ("json", "json" in members))
               if not present]
    if missing:
        return f"member(s) missing: {', '.join(missing)}"
    start = min(offset for offset, _, _ in members.values())
    end = max(stop for _, stop, _ in members.values())
    if start != index.offset[sample_id]:
        return f"index offset {index.offset[sample_id]} but the sample starts at byte {start}"
    if end > start + index.size[sample_id]:
        return f"index size {index.size[sample_id]} but the members span {end - start} bytes"
    try:
        meta = SampleMeta.from_json_bytes(members["json"][2])
    except (ValueError, KeyError, TypeError) as error:
        return f"json member unreadable ({type(error).__name__}: {error})"
    try:
        text = members["txt"][2].decode("utf-8")
    except UnicodeDecodeError as error:
        return f"txt member is not UTF-8 ({error})"
    try:
        frames = decode_video(videos[0], members[videos[0]][2])
    except Exception as error:  # any decoder failure is a finding, not a crash of the check
        return f"{videos[0]} does not decode ({type(error).__name__}: {error})"
    for what, found, wanted in (("sample_id", meta.sample_id, sample_id), ("split", meta.split, split),
                                ("n_frames (json)", meta.n_frames, frames.shape[0]),
                                ("n_frames (index)", index.n_frames[sample_id], frames.shape[0]),
                                ("sentence_id", meta.sentence_id, index.sentence_id[sample_id]),
                                ("text", text, index.text[sample_id])):
        if found != wanted:
            return f"{what} {found!r} but expected {wanted!r}"
    return None


def format_summary(summary: dict) -> str:
    lines = [f"[{summary['split']}] {summary['samples']} samples in {summary['shards']} shards "
             f"({summary['video_format']}, {summary['bytes'] / 1e6:.1f} MB), {summary['distinct_sentences']} distinct sentences",
             f"  frames: {summary['frames']} total, min {summary['frames_min']} / mean {summary['frames_mean']} "
             f"/ max {summary['frames_max']}"]
    if "fps" in summary:
        lines.append(f"  duration: {summary['hours']} h at {summary['fps']} fps, mean {summary['seconds_mean']} s, "
                     f"max {summary['seconds_max']} s")
    signers = summary["signers"]
    shown = ", ".join(f"{name} {count}" for name, count in list(signers.items())[:8])
    lines.append(f"  signers ({len(signers)}): {shown}{' ...' if len(signers) > 8 else ''}")
    for example in summary["examples"]:
        lines.append(f"  {example['key']}  {example['n_frames']} frames  signer {example['signer']}  "
                     f"sentence {example['sentence_id']}: {example['text']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sharded_data.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="shard folder (written by sharded_data.write or sharded_data.synth)")
    parser.add_argument("--split", action="append", help="only this split (repeatable); default all")
    parser.add_argument("--samples", type=int, default=3, help="examples to show per split")
    parser.add_argument("--check", action="store_true", help="decode everything; list bad samples; exit 1 if any")
    parser.add_argument("--pairs", action="store_true",
                        help="print the pair statistics (text/gloss overlap, exact and hidden twins, one sign apart, "
                             "same signer, their shares in random batches of 16) of each split (default: train)")
    args = parser.parse_args(argv)
    if args.pairs:
        return print_pair_statistics(args.dir, args.split or ["train"])

    splits = args.split or available_splits(args.dir)
    if not splits:
        print(f"error: {args.dir}: no index-*.json (not a shard folder, or its write has not finished)", file=sys.stderr)
        return 1
    corpus = read_corpus(args.dir)
    if corpus:
        print(f"{args.dir}: source {corpus.get('source')}, {corpus.get('video_format')}, fps {corpus.get('fps')}, "
              f"frame size {corpus.get('frame_size')}, sentences {corpus.get('num_sentences')}")
    all_bad: list[BadSample] = []
    for split in splits:
        try:
            print(format_summary(summarize_split(args.dir, split, args.samples)))
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if args.check:
            bad = check_split(args.dir, split)
            print(f"  check: {'OK, every sample decodes and matches the index' if not bad else f'{len(bad)} bad'}")
            all_bad += bad
    if all_bad:
        print("bad samples (shard, key, cause):")
        for entry in all_bad:
            print(f"  {entry}")
        return 1
    return 0


def print_pair_statistics(shard_dir: str, splits: list[str]) -> int:
    from sharded_data.pair_stats import format_table, load_pair_samples, pair_statistics

    try:
        columns = {split: pair_statistics(load_pair_samples(shard_dir, split)) for split in splits}
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{shard_dir}: pair statistics of random pairs and random batches (sharded_data.pair_stats)")
    print(format_table(columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
