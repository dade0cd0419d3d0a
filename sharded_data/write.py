"""Write a corpus of sign videos into WebDataset shards plus a per-split index (see format.py for the layout).

    python -m sharded_data.write --manifest FILE.tsv|FILE.jsonl --out DIR [--video-format mp4|npy] [--resize H W]
    python -m sharded_data.write --phoenix ROOT   --out DIR    # PHOENIX-2014T release folder
    python -m sharded_data.write --csl-daily ROOT --out DIR [--csl-labels FILE | --trust-pickle]

On several machines (a job array, slurm/shard.sh), the same command with the same flags in each task, then once more:

    python -m sharded_data.write ... --out DIR --task-index I --num-tasks N    # task I of 0..N-1, all at once
    python -m sharded_data.write ... --out DIR --finalize                      # when every task has succeeded

How a write proceeds, and why it can be interrupted and resumed:
1. Every sample gets its sample id (position in its split) and a sentence id (one per distinct normalized
   text over all splits) up front; the splits are cut into shards of `samples_per_shard`.
2. Worker processes write whole shards: load frames (within the decode limit, `--max-decoded-gib`), resize,
   encode, append `{key}.mp4|frames.npy`, `{key}.txt`, `{key}.json` to a temporary tar, fsync it, rename it to
   `shards-S-NNNNNN.tar`, then write a sidecar `.progress/shards-S-NNNNNN.json` listing its samples, their byte
   offsets (from tarfile's offsets), the tar's size and SHA-256. A shard is finished when both exist and the tar
   still has that size and checksum; a re-run skips finished shards and rewrites damaged ones.
3. Only when every shard of every split is finished are `index-S.json` (with each shard's size and SHA-256)
   and `corpus.json` written, so a failed write never leaves an index that looks complete.
The arguments that decide the bytes on disk are kept in `.progress/settings.json`; a re-run into the same
folder with different ones is refused.

Where each step lives: write_plan.py (1), shard_writer.py (2, and the renumbering after skips),
write_progress.py (the progress record that makes 2 resumable), write_index.py (3). This module runs them.

A job array splits step 2: every task makes the same plan (step 1 depends on the sources only) and writes the
shards at plan positions p (all splits, in order) with p % N == I; it discards only its own shards' temporary
files (the other tasks are writing theirs) and skips step 3. `--finalize` then checks that every shard is
finished (naming the task that should have written each missing one) and does step 3. Shards hold fixed
tar timestamps, so N tasks + finalize write the same bytes as one process.

With `skip_bad`, a video that fails to load is logged, counted and left out; since sample ids must stay
0..N-1, the shards after a gap are then rewritten with shifted ids (a copy of the tar bytes, no re-encoding).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from sharded_data.format import DEFAULT_MAX_DECODED_BYTES, VIDEO_FORMATS
from sharded_data.shard_writer import SHARD_MTIME, BadVideoError, resize_frames, run_tasks, renumber, write_shard
from sharded_data.sources import (
    CSL_LABEL_FILE,
    CSL_PICKLE,
    LayoutError,
    VideoSource,
    convert_csl_pickle,
    csl_daily_sources,
    phoenix_sources,
    read_manifest,
)
from sharded_data.write_index import write_indexes
from sharded_data.write_plan import ShardTask, WriteSettings, assign_sentence_ids, check_sources, digest, plan_shards
from sharded_data.write_progress import (
    PROGRESS_DIR,
    SETTINGS_FILE,
    TASKS_FILE,
    IncompleteWriteError,
    SampleRecord,
    SettingsMismatchError,
    ShardRecord,
    check_all_finished,
    check_settings,
    claim_directory,
    finished_record,
    forget_unfinished,
    write_json_shared,
)

__all__ = [  # what callers import from here (the split modules hold the code)
    "PROGRESS_DIR", "SETTINGS_FILE", "SHARD_MTIME", "TASKS_FILE", "BadVideoError", "IncompleteWriteError",
    "SampleRecord", "SettingsMismatchError", "ShardRecord", "ShardTask", "WriteSettings", "assign_sentence_ids",
    "main", "parse_args", "resize_frames", "write_corpus", "write_shard",
]

log = logging.getLogger(__name__)


def write_corpus(
    out_dir: str | os.PathLike,
    splits: dict[str, list[VideoSource]],
    *,
    video_format: str = "mp4",
    samples_per_shard: int = 100,
    num_workers: int = 2,
    resize: tuple[int, int] | None = None,
    source: str = "manifest",
    corpus_info: dict | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    task_index: int | None = None,
    num_tasks: int | None = None,
    finalize: bool = False,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> dict:
    """Write `splits` (split -> sources, in sample-id order) as shards + index into `out_dir`; resumable.

    num_workers <= 1 writes in this process. Returns a summary: per split samples/skipped/shards/frames,
    total bytes, seconds, shards written now vs. found finished, frames per second written.

    One task of a job array (`task_index` in 0..num_tasks-1) writes only its share of the shards and no index;
    `finalize=True`, once all tasks have succeeded, writes no shard: it checks that every shard is finished
    (IncompleteWriteError naming the missing ones and their tasks) and writes the indexes. Every call of an
    array gets the same arguments apart from these.

    `max_decoded_bytes`: a video of the built-in sources that would decode to more is a bad video (refused
    before its frames are allocated; skipped with skip_bad).
    """
    started = time.perf_counter()
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format {video_format!r}: choose one of {VIDEO_FORMATS}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if resize is not None:
        resize = (int(resize[0]), int(resize[1]))
        if min(resize) < 1:
            raise ValueError(f"resize must be two positive sides (H, W), got {resize}")
    if (task_index is None) != (num_tasks is None):
        raise ValueError("task_index and num_tasks go together (task I of N), or neither")
    if num_tasks is not None and not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index must be in 0..num_tasks-1 = 0..{num_tasks - 1}, got {task_index}")
    if finalize and num_tasks is not None:
        raise ValueError("finalize runs once after the tasks, not as one of them: give it no task_index/num_tasks")
    splits = {split: list(sources) for split, sources in splits.items()}
    check_sources(splits)
    sentence_ids = assign_sentence_ids(splits)

    out_dir = Path(out_dir)
    settings = WriteSettings(video_format, samples_per_shard, list(resize) if resize else None, source, skip_bad,
                             {split: digest(sources, sentence_ids[split]) for split, sources in splits.items()})
    tasks = plan_shards(out_dir, splits, sentence_ids, video_format, samples_per_shard, resize, source, skip_bad,
                        max_decoded_bytes)
    if finalize:
        check_settings(out_dir, settings)
        check_all_finished(out_dir, tasks)
        forget_unfinished(out_dir)
        mine = tasks  # all finished (and their checksums verified): nothing to write
        todo = []
    else:
        if num_tasks is None:
            mine = tasks
            claim_directory(out_dir, settings)
        else:
            mine = tasks[task_index::num_tasks]  # a task of an array owns the plan positions p % N == I
            claim_directory(out_dir, settings, owned=mine)
            write_json_shared(out_dir / PROGRESS_DIR / TASKS_FILE, dict(num_tasks=num_tasks))
        todo = [task for task in mine if finished_record(task) is None]  # reads and checks every finished shard
    frames_written = run_tasks(todo, num_workers, progress)

    def timing() -> dict:
        seconds = time.perf_counter() - started
        return dict(seconds=round(seconds, 3), shards_written=len(todo), shards_reused=len(mine) - len(todo),
                    frames_written=frames_written, frames_per_second=round(frames_written / max(seconds, 1e-9), 1))

    if num_tasks is not None:  # the index waits for every task: --finalize
        return dict(out_dir=str(out_dir), task_index=task_index, num_tasks=num_tasks, shards=len(mine),
                    shards_planned=len(tasks), **timing())
    records = {split: [] for split in splits}
    for task in tasks:
        record = finished_record(task, verify_checksum=False)  # verified above, or written (and hashed) just now
        if record is None:  # cannot happen unless files vanish under us
            raise RuntimeError(f"{out_dir / task.name}: shard not finished after writing; re-run to resume")
        records[task.split].append(record)
    for split, split_records in records.items():
        renumber(out_dir, split, split_records)
    summary = write_indexes(out_dir, settings, records, corpus_info or {})
    summary.update(timing())
    return summary


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sharded_data.write", description=__doc__.split("\n\n")[0])
    origin = parser.add_mutually_exclusive_group(required=True)
    origin.add_argument("--manifest", help="TSV (header: split id video text [signer sentence_id fps]) or JSONL")
    origin.add_argument("--phoenix", metavar="ROOT", help="PHOENIX-2014T release folder (features/, annotations/)")
    origin.add_argument("--csl-daily", metavar="ROOT", help="CSL-Daily folder (sentence/frames_512x512, sentence_label)")
    parser.add_argument("--out", required=True, help="output shard folder")
    parser.add_argument("--video-format", choices=VIDEO_FORMATS, default="mp4",
                        help="mp4 (H.264, compact) or npy (raw uint8, fastest to read)")
    parser.add_argument("--resize", nargs=2, type=int, metavar=("H", "W"), help="resize frames at write time")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="processes writing shards (1 = this process)")
    parser.add_argument("--skip-bad", action="store_true", help="skip, log and count videos that fail to load")
    parser.add_argument("--max-decoded-gib", type=float, default=DEFAULT_MAX_DECODED_BYTES / 2**30,
                        help="refuse (or with --skip-bad skip) a video whose decoded frames would exceed this many GiB, "
                             "before allocating them")
    parser.add_argument("--splits", nargs="+", help="write only these splits")
    parser.add_argument("--csl-labels", help=f"CSL-Daily label file name|text|signer (default ROOT/{CSL_LABEL_FILE})")
    parser.add_argument("--trust-pickle", action="store_true",
                        help=f"read CSL-Daily's shipped ROOT/{CSL_PICKLE} (unpickling runs code from the file)")
    parser.add_argument("--convert-labels", action="store_true",
                        help=f"with --csl-daily --trust-pickle: write ROOT/{CSL_LABEL_FILE} from the pickle and exit")
    parser.add_argument("--no-progress", action="store_true")
    array = parser.add_argument_group("job array (slurm/shard.sh): N tasks with the same flags, then --finalize")
    array.add_argument("--task-index", type=int, metavar="I", help="write only shards p with p %% N == I, no index")
    array.add_argument("--num-tasks", type=int, metavar="N", help="tasks in the array (with --task-index)")
    array.add_argument("--finalize", action="store_true",
                       help="after every task succeeded: check that all shards are finished, write the indexes")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.task_index is None) != (args.num_tasks is None):
        parser.error("--task-index I and --num-tasks N go together (task I of N), or neither")
    if args.num_tasks is not None and not 0 <= args.task_index < args.num_tasks:
        parser.error(f"--task-index must be in 0..{args.num_tasks - 1} (0..N-1 for --num-tasks {args.num_tasks}), "
                     f"got {args.task_index}")
    if args.finalize and args.num_tasks is not None:
        parser.error("--finalize runs once after the array tasks, not as one of them: drop --task-index/--num-tasks")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.convert_labels:
            if not (args.csl_daily and args.trust_pickle):
                raise LayoutError("--convert-labels needs --csl-daily ROOT and --trust-pickle")
            root = Path(args.csl_daily)
            count = convert_csl_pickle(root / CSL_PICKLE, root / CSL_LABEL_FILE)
            print(f"wrote {count} labels to {root / CSL_LABEL_FILE}")
            return 0
        if args.manifest:
            splits, source = read_manifest(args.manifest), "manifest"
        elif args.phoenix:
            splits, source = phoenix_sources(args.phoenix), "phoenix14t"
        else:
            splits, source = csl_daily_sources(args.csl_daily, args.csl_labels, args.trust_pickle), "csl-daily"
        if args.splits:
            absent = [split for split in args.splits if split not in splits]
            if absent:
                raise LayoutError(f"--splits {' '.join(absent)}: not in the corpus (it has {', '.join(splits)})")
            splits = {split: splits[split] for split in args.splits}
        summary = write_corpus(args.out, splits, video_format=args.video_format,
                               samples_per_shard=args.samples_per_shard, num_workers=args.workers,
                               resize=tuple(args.resize) if args.resize else None, source=source,
                               progress=not args.no_progress, skip_bad=args.skip_bad, task_index=args.task_index,
                               num_tasks=args.num_tasks, finalize=args.finalize,
                               max_decoded_bytes=int(args.max_decoded_gib * 2**30))
    except (LayoutError, BadVideoError, SettingsMismatchError, IncompleteWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
