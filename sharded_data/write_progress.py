"""The write's progress record, `OUT/.progress/`: what makes an interrupted write resumable and never wrong.

    .progress/settings.json              the arguments that decide the bytes (a re-run with others is refused)
    .progress/tasks.json                 {"num_tasks": N} of a job array writing here (finalize names tasks)
    .progress/shards-S-NNNNNN.json       the sidecar of a finished shard: its samples, byte offsets, size, SHA-256

A shard is finished when its tar and its sidecar both exist and agree: the tar has the size and SHA-256 the
sidecar records (a shard corrupted in place after it was written is written again, never reused), and the
sidecar lists exactly the planned samples. Tars and sidecars are fsynced before they count.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sharded_data.format import corpus_path, file_sha256, fsync_path, shard_name, write_json_atomic
from sharded_data.write_plan import ShardTask, WriteSettings

log = logging.getLogger("sharded_data.write")

PROGRESS_DIR = ".progress"
SETTINGS_FILE = "settings.json"
TASKS_FILE = "tasks.json"  # {"num_tasks": N} of the job array writing here: finalize names missing shards' tasks


class SettingsMismatchError(ValueError):
    """The output folder holds a (partial) write made with other arguments."""


class IncompleteWriteError(RuntimeError):
    """Finalizing found planned shards that no task has finished (message names them and their tasks)."""


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
    sha256: str = ""  # of the tar; "" in sidecars of older writes, which are then written again

    @classmethod
    def from_dict(cls, data: dict) -> "ShardRecord":
        return cls(split=data["split"], number=data["number"], tar_bytes=data["tar_bytes"],
                   samples=[SampleRecord(**sample) for sample in data["samples"]], skipped=data["skipped"],
                   sha256=data.get("sha256", ""))


def sidecar_path(out_dir: Path | str, name: str) -> Path:
    return Path(out_dir) / PROGRESS_DIR / name.replace(".tar", ".json")


def finished_record(task: ShardTask, verify_checksum: bool = True) -> ShardRecord | None:
    """The sidecar of a finished shard (tar renamed into place + sidecar agreeing with it), else None.

    verify_checksum reads the whole tar; without it only the size is compared (for shards this very run wrote).
    """
    tar_path = Path(task.out_dir) / task.name
    sidecar = sidecar_path(task.out_dir, task.name)
    if not (tar_path.is_file() and sidecar.is_file()):
        return None
    try:
        record = ShardRecord.from_dict(json.loads(sidecar.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None
    planned = sorted([s.planned_id for s in record.samples] + [s["planned_id"] for s in record.skipped])
    if record.tar_bytes != tar_path.stat().st_size or planned != [item[0] for item in task.items]:
        return None
    if not record.sha256 or (verify_checksum and file_sha256(tar_path) != record.sha256):
        log.warning("%s: its bytes differ from the checksum recorded when it was written (damaged in place?); "
                    "writing it again", tar_path)
        return None
    return record


def write_record(out_dir: Path, record: ShardRecord) -> None:
    write_json_atomic(sidecar_path(out_dir, shard_name(record.split, record.number)), asdict(record))


def seal_tar(tmp: Path, final: Path, record: ShardRecord) -> None:
    """Record the finished tar's size and checksum, make it durable, and move it into place."""
    record.tar_bytes = tmp.stat().st_size
    fsync_path(tmp)
    record.sha256 = file_sha256(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


def claim_directory(out_dir: Path, settings: WriteSettings, owned: list[ShardTask] | None = None) -> None:
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
        write_json_shared(settings_file, asdict(settings), exclusive=True)
    check_settings(out_dir, settings)
    forget_unfinished(out_dir, owned)


def check_settings(out_dir: Path, settings: WriteSettings) -> None:
    settings_file = out_dir / PROGRESS_DIR / SETTINGS_FILE
    if not settings_file.is_file():  # only finalizing gets here: a writer creates the file first thing
        raise IncompleteWriteError(f"{out_dir}: nothing was written here ({settings_file} is missing); run the "
                                   f"write (or every task of the array) first, then finalize")
    try:
        previous = json.loads(settings_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SettingsMismatchError(f"{settings_file}: unreadable ({error}); delete {out_dir} to start over") from None
    current = asdict(settings)
    if previous != current:
        differing = sorted(key for key in set(previous) | set(current) if previous.get(key) != current.get(key))
        raise SettingsMismatchError(
            f"{out_dir}: holds a write made with other settings (differ: {', '.join(differing)}); give every "
            f"task of an array the same flags; otherwise write to a new --out folder, or delete {out_dir} to start over"
        )


def write_json_shared(path: Path, data: dict, exclusive: bool = False) -> None:
    """Write JSON atomically where several tasks, on several machines (a pid is no unique name), may write it
    at once. exclusive: keep the file if it exists (os.link never replaces), so only the first writer's stays."""
    tmp = path.with_name(f".{path.name}.tmp-{os.uname().nodename}-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:  # unique among live writers; a dead one's is replaced
            handle.write(json.dumps(data, ensure_ascii=False, indent=1))  # the bytes write_json_atomic writes
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def forget_unfinished(out_dir: Path, owned: list[ShardTask] | None = None) -> None:
    """Delete the index and corpus.json (written last: until then none may claim the folder is complete) and
    the temporary files of writers killed mid-write: all of them, or only those of the `owned` shards."""
    progress_dir = out_dir / PROGRESS_DIR
    leftovers = [*out_dir.glob(".*.tmp-*"), *progress_dir.glob(".*.tmp-*")]
    if owned is not None:
        # `.NAME.tmp-PID` (a tar or its sidecar being written) or `.NAME.tmp-HOST-PID` (write_json_shared)
        mine = {f".{name}" for task in owned for name in (task.name, sidecar_path(out_dir, task.name).name)}
        leftovers = [path for path in leftovers if path.name.rsplit(".tmp-", 1)[0] in mine]
    for stale in [*out_dir.glob("index-*.json"), corpus_path(out_dir), *leftovers]:
        stale.unlink(missing_ok=True)


def check_all_finished(out_dir: Path, tasks: list[ShardTask]) -> None:
    """Raise IncompleteWriteError naming every unfinished shard, grouped by the array task that owns it."""
    missing = [(position, task.name) for position, task in enumerate(tasks) if finished_record(task) is None]
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
