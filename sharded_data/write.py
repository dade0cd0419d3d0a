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
2. Worker processes write whole shards: load frames, resize, encode, append `{key}.mp4|frames.npy`,
   `{key}.txt`, `{key}.json` to a temporary tar, rename it to `shards-S-NNNNNN.tar`, then write a sidecar
   `.progress/shards-S-NNNNNN.json` listing its samples and their byte offsets (from tarfile's offsets).
   A shard is finished when both exist; a re-run skips finished shards.
3. Only when every shard of every split is finished are `index-S.json` and `corpus.json` written, so a
   failed write never leaves an index that looks complete.
The arguments that decide the bytes on disk are kept in `.progress/settings.json`; a re-run into the same
folder with different ones is refused.

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
import bisect
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sharded_data.format import (
    VIDEO_FORMATS,
    SampleMeta,
    ShardIndex,
    ShardInfo,
    check_frames,
    corpus_path,
    encode_video,
    index_path,
    normalize_text,
    sample_key,
    shard_name,
    write_json_atomic,
)
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

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
SETTINGS_FILE = "settings.json"
TASKS_FILE = "tasks.json"  # {"num_tasks": N} of the job array writing here: finalize names missing shards' tasks
# Every tar member gets this mtime (not the time of writing): a shard is then a function of its sources and
# settings, so array tasks, one process and a re-write all produce the same bytes (and checksums).
SHARD_MTIME = 0


class BadVideoError(ValueError):
    """A source whose frames could not be loaded (message names the sample and its file, and the fix)."""


class SettingsMismatchError(ValueError):
    """The output folder holds a (partial) write made with other arguments."""


class IncompleteWriteError(RuntimeError):
    """Finalizing found planned shards that no task has finished (message names them and their tasks)."""


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

    @property
    def name(self) -> str:
        return shard_name(self.split, self.number)


@dataclass
class SampleRecord:
    """One written sample as a sidecar lists it; becomes one row of the split index."""

    planned_id: int
    sample_id: int
    offset: int
    size: int
    sentence_id: int
    n_frames: int
    signer: str
    text: str
    name: str
    fps: float
    height: int
    width: int


@dataclass
class ShardRecord:
    """The sidecar of a finished shard."""

    split: str
    number: int
    tar_bytes: int
    samples: list[SampleRecord] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {planned_id, name, location, cause}

    @classmethod
    def from_dict(cls, data: dict) -> "ShardRecord":
        return cls(split=data["split"], number=data["number"], tar_bytes=data["tar_bytes"],
                   samples=[SampleRecord(**sample) for sample in data["samples"]], skipped=data["skipped"])


# ---------------------------------------------------------------------------------------------- public API


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
) -> dict:
    """Write `splits` (split -> sources, in sample-id order) as shards + index into `out_dir`; resumable.

    num_workers <= 1 writes in this process. Returns a summary: per split samples/skipped/shards/frames,
    total bytes, seconds, shards written now vs. found finished, frames per second written.

    One task of a job array (`task_index` in 0..num_tasks-1) writes only its share of the shards and no index;
    `finalize=True`, once all tasks have succeeded, writes no shard: it checks that every shard is finished
    (IncompleteWriteError naming the missing ones and their tasks) and writes the indexes. Every call of an
    array gets the same arguments apart from these.
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
    _check_sources(splits)
    sentence_ids = assign_sentence_ids(splits)

    out_dir = Path(out_dir)
    settings = WriteSettings(video_format, samples_per_shard, list(resize) if resize else None, source, skip_bad,
                             {split: _digest(sources, sentence_ids[split]) for split, sources in splits.items()})
    # The plan: every shard of every split, in order. A task of an array owns the positions p % N == I.
    tasks = [
        ShardTask(str(out_dir), split, number, items, video_format, resize, source, skip_bad)
        for split, sources in splits.items()
        for number, items in enumerate(_chunks(
            [(sample_id, sentence_ids[split][sample_id], src) for sample_id, src in enumerate(sources)],
            samples_per_shard))
    ]
    if finalize:
        _check_settings(out_dir, settings)
        _check_all_finished(out_dir, tasks)
        _forget_unfinished(out_dir)
        mine = tasks  # all finished: nothing to write
    elif num_tasks is None:
        mine = tasks
        _claim_directory(out_dir, settings)
    else:
        mine = tasks[task_index::num_tasks]
        _claim_directory(out_dir, settings, owned=mine)
        _write_json_shared(out_dir / PROGRESS_DIR / TASKS_FILE, dict(num_tasks=num_tasks))
    todo = [task for task in mine if _finished_record(task) is None]
    frames_written = _run_tasks(todo, num_workers, progress)

    def timing() -> dict:
        seconds = time.perf_counter() - started
        return dict(seconds=round(seconds, 3), shards_written=len(todo), shards_reused=len(mine) - len(todo),
                    frames_written=frames_written, frames_per_second=round(frames_written / max(seconds, 1e-9), 1))

    if num_tasks is not None:  # the index waits for every task: --finalize
        return dict(out_dir=str(out_dir), task_index=task_index, num_tasks=num_tasks, shards=len(mine),
                    shards_planned=len(tasks), **timing())
    records = {split: [] for split in splits}
    for task in tasks:
        record = _finished_record(task)
        if record is None:  # cannot happen unless files vanish under us
            raise RuntimeError(f"{out_dir / task.name}: shard not finished after writing; re-run to resume")
        records[task.split].append(record)
    for split, split_records in records.items():
        _renumber(out_dir, split, split_records)
    summary = _write_indexes(out_dir, settings, records, corpus_info or {})
    summary.update(timing())
    return summary


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


# ------------------------------------------------------------------------------------------ planning


def _check_sources(splits: dict[str, list[VideoSource]]) -> None:
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


def _digest(sources: list[VideoSource], sentence_ids: list[int]) -> str:
    # A dataclass repr names the class and lists every field (path, pattern, renderer parameters...): what
    # decides the frames. The module is left out: `python -m x` and `import x` name it differently.
    digest = hashlib.sha256()
    for src, sentence_id in zip(sources, sentence_ids):
        digest.update(f"{src!r}|{sentence_id}\n".encode("utf-8"))
    return digest.hexdigest()


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _claim_directory(out_dir: Path, settings: WriteSettings, owned: list[ShardTask] | None = None) -> None:
    """Refuse a folder written with other settings; forget what a previous run left half-done.

    The N tasks of a job array claim the folder at the same moment: the settings file is created once, by
    whichever task comes first, and the others compare theirs with it. `owned` (a task's shards) limits the
    clean-up to that task's own temporary files: the other tasks' belong to writers that are still running.
    """
    progress_dir = out_dir / PROGRESS_DIR
    settings_file = progress_dir / SETTINGS_FILE
    # Shards are looked for before the settings: every writer creates the settings before its first shard, so
    # shards seen here with no settings file after were not written by this writer (or a task of its array).
    unrecorded = out_dir.is_dir() and (any(out_dir.glob("shards-*.tar")) or any(out_dir.glob("index-*.json")))
    if not settings_file.is_file():
        if unrecorded:
            raise SettingsMismatchError(f"{out_dir}: holds shards that this writer did not record ({settings_file} "
                                        f"is missing); write to a new --out folder, or delete {out_dir} to start over")
        progress_dir.mkdir(parents=True, exist_ok=True)
        _write_json_shared(settings_file, asdict(settings), exclusive=True)
    _check_settings(out_dir, settings)
    _forget_unfinished(out_dir, owned)


def _check_settings(out_dir: Path, settings: WriteSettings) -> None:
    settings_file = out_dir / PROGRESS_DIR / SETTINGS_FILE
    if not settings_file.is_file():  # only finalizing gets here: a writer creates the file first thing
        raise IncompleteWriteError(f"{out_dir}: nothing was written here ({settings_file} is missing); run the "
                                   f"write (or every task of the array) first, then finalize")
    previous = json.loads(settings_file.read_text(encoding="utf-8"))
    current = asdict(settings)
    if previous != current:
        differing = sorted(key for key in set(previous) | set(current) if previous.get(key) != current.get(key))
        raise SettingsMismatchError(
            f"{out_dir}: holds a write made with other settings (differ: {', '.join(differing)}); give every "
            f"task of an array the same flags; otherwise write to a new --out folder, or delete {out_dir} to start over"
        )


def _write_json_shared(path: Path, data: dict, exclusive: bool = False) -> None:
    """Write JSON atomically where several tasks, on several machines (a pid is no unique name), may write it
    at once. exclusive: keep the file if it exists (os.link never replaces), so only the first writer's stays."""
    tmp = path.with_name(f".{path.name}.tmp-{os.uname().nodename}-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:  # unique among live writers; a dead one's is replaced
            handle.write(json.dumps(data, ensure_ascii=False, indent=1))  # the bytes write_json_atomic writes
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _forget_unfinished(out_dir: Path, owned: list[ShardTask] | None = None) -> None:
    """Delete the index and corpus.json (written last: until then none may claim the folder is complete) and
    the temporary files of writers killed mid-write: all of them, or only those of the `owned` shards."""
    progress_dir = out_dir / PROGRESS_DIR
    leftovers = [*out_dir.glob(".*.tmp-*"), *progress_dir.glob(".*.tmp-*")]
    if owned is not None:
        # `.NAME.tmp-PID` (a tar or its sidecar being written) or `.NAME.tmp-HOST-PID` (_write_json_shared)
        mine = {f".{name}" for task in owned for name in (task.name, _sidecar_path(out_dir, task.name).name)}
        leftovers = [path for path in leftovers if path.name.rsplit(".tmp-", 1)[0] in mine]
    for stale in [*out_dir.glob("index-*.json"), corpus_path(out_dir), *leftovers]:
        stale.unlink(missing_ok=True)


def _check_all_finished(out_dir: Path, tasks: list[ShardTask]) -> None:
    """Raise IncompleteWriteError naming every unfinished shard, grouped by the array task that owns it."""
    missing = [(position, task.name) for position, task in enumerate(tasks) if _finished_record(task) is None]
    if not missing:
        return
    tasks_file = out_dir / PROGRESS_DIR / TASKS_FILE
    num_tasks = json.loads(tasks_file.read_text(encoding="utf-8"))["num_tasks"] if tasks_file.is_file() else None

    def listed(names: list[str]) -> str:  # a whole array's worth of shards would bury the rest of the message
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    head = f"{out_dir}: {len(missing)} of {len(tasks)} planned shards are not finished, so no index was written."
    if num_tasks is None:
        raise IncompleteWriteError(f"{head} Missing: {listed([name for _, name in missing])}. Write them (a run "
                                   f"without --finalize resumes), then finalize again")
    by_task: dict[int, list[str]] = {}
    for position, name in missing:
        by_task.setdefault(position % num_tasks, []).append(name)
    lines = [f"  task {index} of {num_tasks}: {listed(names)}" for index, names in sorted(by_task.items())]
    rerun = ",".join(str(index) for index in sorted(by_task))
    raise IncompleteWriteError("\n".join([
        f"{head} Array task(s) {rerun} did not finish their shards (see their logs):", *lines,
        f"Re-run them (--task-index I --num-tasks {num_tasks}; with slurm/shard.sh: "
        f"NUM_TASKS={num_tasks} sbatch --array={rerun} slurm/shard.sh), then finalize again."]))


def _sidecar_path(out_dir: Path | str, name: str) -> Path:
    return Path(out_dir) / PROGRESS_DIR / name.replace(".tar", ".json")


def _finished_record(task: ShardTask) -> ShardRecord | None:
    """The sidecar of a finished shard (tar renamed into place + sidecar agreeing with it), else None."""
    tar_path = Path(task.out_dir) / task.name
    sidecar = _sidecar_path(task.out_dir, task.name)
    if not (tar_path.is_file() and sidecar.is_file()):
        return None
    try:
        record = ShardRecord.from_dict(json.loads(sidecar.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None
    planned = sorted([s.planned_id for s in record.samples] + [s["planned_id"] for s in record.skipped])
    if record.tar_bytes != tar_path.stat().st_size or planned != [item[0] for item in task.items]:
        return None
    return record


# ------------------------------------------------------------------------------------------- writing


def _run_tasks(tasks: list[ShardTask], num_workers: int, progress: bool) -> int:
    """Write the shards, in this process or in a pool of workers (each writes whole shards)."""
    from tqdm import tqdm

    def bar():
        return tqdm(total=sum(len(task.items) for task in tasks), unit="video", desc="writing shards",
                    disable=not progress or not tasks)

    frames = 0
    if num_workers <= 1 or len(tasks) <= 1:
        with bar() as progress_bar:
            for task in tasks:
                frames += write_shard(task)
                progress_bar.update(len(task.items))
        return frames
    # The pool starts before the progress bar: forking while tqdm's monitor thread runs is asking for trouble.
    with multiprocessing.Pool(min(num_workers, len(tasks))) as pool, bar() as progress_bar:
        for task_frames, task_size in pool.imap_unordered(_write_shard_counted, tasks):
            frames += task_frames
            progress_bar.update(task_size)
    return frames


def _write_shard_counted(task: ShardTask) -> tuple[int, int]:
    return write_shard(task), len(task.items)


def write_shard(task: ShardTask) -> int:
    """Write one shard (temporary tar -> rename -> sidecar). Returns the number of frames written."""
    out_dir = Path(task.out_dir)
    final = out_dir / task.name
    tmp = out_dir / f".{task.name}.tmp-{os.getpid()}"
    record = ShardRecord(task.split, task.number, tar_bytes=0)
    frames_written = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for planned_id, sentence_id, src in task.items:
                try:
                    frames = _load(src, task.resize)
                except BadVideoError as error:
                    if not task.skip_bad:
                        raise
                    log.warning("skipped %s sample %s: %s", task.split, src.name, error)
                    record.skipped.append(dict(planned_id=planned_id, name=src.name, location=src.location(),
                                               cause=str(error)))
                    continue
                meta = SampleMeta(planned_id, sentence_id, src.signer, int(frames.shape[0]), float(src.fps),
                                  task.source_tag, task.split, src.name)
                extension, video = encode_video(frames, task.video_format, fps=float(src.fps))
                offset, size = _add_sample(tar, sample_key(task.split, planned_id), extension, video, src.text, meta)
                record.samples.append(SampleRecord(planned_id, planned_id, offset, size, sentence_id, meta.n_frames,
                                                   src.signer, src.text, src.name, meta.fps,
                                                   int(frames.shape[1]), int(frames.shape[2])))
                frames_written += meta.n_frames
        record.tar_bytes = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(_sidecar_path(out_dir, task.name), asdict(record))
    return frames_written


def _load(src: VideoSource, resize: tuple[int, int] | None) -> np.ndarray:
    try:
        frames = check_frames(src.load_frames(), src.location())
    except (ValueError, OSError) as error:
        raise BadVideoError(f"sample {src.name!r} ({src.location()}): {error}. "
                            f"Fix or remove it, or pass --skip-bad (skip_bad=True) to leave it out") from error
    if resize is not None and frames.shape[1:3] != resize:
        frames = resize_frames(frames, resize)
    return frames


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 T x H x W x 3 frames to (H, W) with antialiased bilinear filtering (PIL)."""
    from PIL import Image

    height, width = size
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
                     for frame in frames])


def _add_sample(tar: tarfile.TarFile, key: str, extension: str, video: bytes, text: str,
                meta: SampleMeta) -> tuple[int, int]:
    """Append the sample's members; returns (offset of its first header, bytes its members span)."""
    start = tar.offset
    for suffix, data in ((extension, video), ("txt", text.encode("utf-8")), ("json", meta.to_json_bytes())):
        info = tarfile.TarInfo(f"{key}.{suffix}")
        info.size, info.mtime, info.mode = len(data), SHARD_MTIME, 0o444
        tar.addfile(info, io.BytesIO(data))
    return start, tar.offset - start


# ---------------------------------------------------------------------------------- skipped samples


def _renumber(out_dir: Path, split: str, records: list[ShardRecord]) -> None:
    """After skips, give the kept samples ids 0..N-1 again by rewriting the shards whose ids shift."""
    skipped = sorted(entry["planned_id"] for record in records for entry in record.skipped)
    if not skipped:
        return
    for record in records:
        final_ids = [s.planned_id - bisect.bisect_left(skipped, s.planned_id) for s in record.samples]
        # The sidecar is rewritten after its tar, so ids that already match it mean the tar has them too
        # (a crash in between leaves a size mismatch, and the shard is then written again from its sources).
        if final_ids != [s.sample_id for s in record.samples]:
            _rewrite_with_ids(out_dir, record, final_ids)


def _rewrite_with_ids(out_dir: Path, record: ShardRecord, final_ids: list[int]) -> None:
    name = shard_name(record.split, record.number)
    path = out_dir / name
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    with tarfile.open(path) as source_tar:
        members = [(info, source_tar.extractfile(info).read()) for info in source_tar.getmembers()]
    if len(members) != 3 * len(record.samples):
        raise RuntimeError(f"{path}: holds {len(members)} members for {len(record.samples)} samples; delete it and re-run")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position, (sample, new_id) in enumerate(zip(record.samples, final_ids)):
                start = tar.offset
                for info, data in members[3 * position:3 * position + 3]:
                    extension = info.name.split(".", 1)[1]
                    if extension == "json":
                        meta = SampleMeta.from_json_bytes(data)
                        meta.sample_id = new_id
                        data = meta.to_json_bytes()
                    renamed = tarfile.TarInfo(f"{sample_key(record.split, new_id)}.{extension}")
                    renamed.size, renamed.mtime, renamed.mode = len(data), info.mtime, info.mode
                    tar.addfile(renamed, io.BytesIO(data))
                sample.sample_id, sample.offset, sample.size = new_id, start, tar.offset - start
        record.tar_bytes = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(_sidecar_path(out_dir, name), asdict(record))


# ------------------------------------------------------------------------------------ index + corpus


def _write_indexes(out_dir: Path, settings: WriteSettings, records: dict[str, list[ShardRecord]],
                   corpus_info: dict) -> dict:
    summary_splits, skipped_samples = {}, []
    fps_values, sizes, sentence_ids, total_bytes = set(), set(), set(), 0
    indexes = {}
    for split, split_records in records.items():
        index = ShardIndex(split=split, video_format=settings.video_format, shards=[])
        for record in split_records:
            skipped_samples += [dict(split=split, **entry) for entry in record.skipped]
            total_bytes += record.tar_bytes
            if not record.samples:  # every sample of this shard was skipped: leave the empty tar out
                continue
            index.shards.append(ShardInfo(shard_name(split, record.number), len(record.samples)))
            for sample in record.samples:
                index.sample_id.append(sample.sample_id)
                index.shard.append(len(index.shards) - 1)
                index.offset.append(sample.offset)
                index.size.append(sample.size)
                index.sentence_id.append(sample.sentence_id)
                index.n_frames.append(sample.n_frames)
                index.signer.append(sample.signer)
                index.text.append(sample.text)
                fps_values.add(sample.fps)
                sizes.add((sample.height, sample.width))
                sentence_ids.add(sample.sentence_id)
        if index.num_samples == 0:
            raise BadVideoError(f"split {split!r}: every sample failed to load (see the warnings above); nothing to index")
        if index.sample_id != list(range(index.num_samples)):
            raise RuntimeError(f"{out_dir}: split {split} sample ids are not 0..N-1 after writing; delete it and re-run")
        indexes[split] = index
        summary_splits[split] = dict(samples=index.num_samples, skipped=sum(len(r.skipped) for r in split_records),
                                     shards=len(index.shards), frames=sum(index.n_frames))
    for split, index in indexes.items():
        index.save(index_path(out_dir, split))
    corpus = dict(
        source=settings.source,
        video_format=settings.video_format,
        fps=fps_values.pop() if len(fps_values) == 1 else None,  # None: differs between videos (see each json)
        frame_size=list(sizes.pop()) if len(sizes) == 1 else None,  # [H, W]; None: differs between videos
        resize=settings.resize,
        splits=list(records),
        counts={split: info["samples"] for split, info in summary_splits.items()},
        skipped={split: info["skipped"] for split, info in summary_splits.items()},
        num_sentences=len(sentence_ids),
        writer=dict(module="sharded_data.write", samples_per_shard=settings.samples_per_shard,
                    skip_bad=settings.skip_bad),
        generator=corpus_info,
        skipped_samples=skipped_samples,
    )
    write_json_atomic(corpus_path(out_dir), corpus)
    return dict(out_dir=str(out_dir), splits=summary_splits, bytes=total_bytes)


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
                               num_tasks=args.num_tasks, finalize=args.finalize)
    except (LayoutError, BadVideoError, SettingsMismatchError, IncompleteWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
