"""Step 2 of a write: worker processes write whole shards, and the shards after a skipped sample are renumbered.

A shard is written to a temporary tar (fixed member timestamps, so its bytes depend on its sources and settings
only: array tasks, one process and a re-write all give the same bytes), fsynced, checksummed, renamed into place,
and then its sidecar is written (write_progress.py): a shard counts as finished only then.

With `skip_bad`, a video that fails to load is logged, counted and left out; since sample ids must stay
0..N-1, the shards after a gap are then rewritten with shifted ids (a copy of the tar bytes, no re-encoding).
"""
from __future__ import annotations

import bisect
import io
import logging
import multiprocessing
import os
import tarfile
from pathlib import Path

import numpy as np

from sharded_data.format import SampleMeta, check_frames, encode_video, sample_key, shard_name
from sharded_data.sources import VideoSource, decode_limit
from sharded_data.write_plan import ShardTask
from sharded_data.write_progress import SampleRecord, ShardRecord, seal_tar, write_record

log = logging.getLogger("sharded_data.write")

# Every tar member gets this mtime (not the time of writing): a shard is then a function of its sources and
# settings, so array tasks, one process and a re-write all produce the same bytes (and checksums).
SHARD_MTIME = 0


class BadVideoError(ValueError):
    """A source whose frames could not be loaded (message names the sample and its file, and the fix)."""


def run_tasks(tasks: list[ShardTask], num_workers: int, progress: bool) -> int:
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
    """Write one shard (temporary tar -> fsync, checksum -> rename -> sidecar). Returns the frames written."""
    out_dir = Path(task.out_dir)
    final = out_dir / task.name
    tmp = out_dir / f".{task.name}.tmp-{os.getpid()}"
    record = ShardRecord(task.split, task.number, tar_bytes=0)
    frames_written = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for planned_id, sentence_id, src in task.items:
                try:
                    with decode_limit(task.max_decoded_bytes):
                        frames = load_frames(src, task.resize)
                except BadVideoError as error:
                    if not task.skip_bad:
                        raise
                    log.warning("skipped %s sample %s: %s", task.split, src.name, error)
                    record.skipped.append(dict(planned_id=planned_id, name=src.name, location=src.location(),
                                               cause=str(error)))
                    continue
                meta = SampleMeta(planned_id, sentence_id, src.signer, int(frames.shape[0]), float(src.fps),
                                  task.source_tag, task.split, src.name, **src.ground_truth())
                extension, video = encode_video(frames, task.video_format, fps=float(src.fps))
                offset, size = add_sample(tar, sample_key(task.split, planned_id), extension, video, src.text, meta)
                record.samples.append(SampleRecord(planned_id, planned_id, offset, size, sentence_id, meta.n_frames,
                                                   src.signer, src.text, src.name, meta.fps,
                                                   int(frames.shape[1]), int(frames.shape[2])))
                frames_written += meta.n_frames
        seal_tar(tmp, final, record)
    finally:
        tmp.unlink(missing_ok=True)
    write_record(out_dir, record)
    return frames_written


def load_frames(src: VideoSource, resize: tuple[int, int] | None) -> np.ndarray:
    try:
        frames = check_frames(src.load_frames(), src.location())
    except (ValueError, OSError) as error:  # DecodeLimitError is a ValueError: a refused bomb is a bad video
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


def add_sample(tar: tarfile.TarFile, key: str, extension: str, video: bytes, text: str,
               meta: SampleMeta) -> tuple[int, int]:
    """Append the sample's members; returns (offset of its first header, bytes its members span)."""
    start = tar.offset
    for suffix, data in ((extension, video), ("txt", text.encode("utf-8")), ("json", meta.to_json_bytes())):
        info = tarfile.TarInfo(f"{key}.{suffix}")
        info.size, info.mtime, info.mode = len(data), SHARD_MTIME, 0o444
        tar.addfile(info, io.BytesIO(data))
    return start, tar.offset - start


# ---------------------------------------------------------------------------------- skipped samples


def renumber(out_dir: Path, split: str, records: list[ShardRecord]) -> None:
    """After skips, give the kept samples ids 0..N-1 again by rewriting the shards whose ids shift."""
    skipped = sorted(entry["planned_id"] for record in records for entry in record.skipped)
    if not skipped:
        return
    for record in records:
        final_ids = [s.planned_id - bisect.bisect_left(skipped, s.planned_id) for s in record.samples]
        # The sidecar is rewritten after its tar, so ids that already match it mean the tar has them too
        # (a crash in between leaves a size or checksum mismatch, and the shard is then written again).
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
        seal_tar(tmp, path, record)
    finally:
        tmp.unlink(missing_ok=True)
    write_record(out_dir, record)
