"""The run directory: one folder that says everything about a training run.

Layout (every path is a property of `RunDir`):

    RUN/
      config.json        the resolved training config (after defaults and CLI flags)
      ds_config.json     the DeepSpeed config actually passed to deepspeed.initialize
      command.txt        the command line of the latest launch
      environment.json   versions (python, torch, deepspeed, transformers), world size, git commit
      tokenizer/         the tokenizer the model was trained with
      metrics.jsonl      one JSON line per logged step (see run_logging.py)
      tensorboard/       TensorBoard event files
      checkpoints/       DeepSpeed tagged checkpoints (see checkpointing.py)

Only rank 0 writes the description (`RunDir.describe`); every rank may construct a `RunDir`
to get the paths. JSON files are written atomically and durably (temporary file, fsync, os.replace,
fsync of the directory), so a crash never leaves a half-written or lost config behind.

A resumed run is the run it claims to be: before a relaunch overwrites config.json, `config_changes`
compares the new config with the stored one, and every key outside RESUMABLE_KEYS that differs is
refused (recipe.training.check_resumed_config).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence


# Settings a relaunch may change without making it another run: how long it goes on, how often it evaluates,
# saves and logs, how many checkpoints it keeps, how many loader processes it uses, and where the run directory
# itself is (a run copied or moved elsewhere is the same run). The one list of them.
RESUMABLE_KEYS = ("max_steps", "eval_every", "save_every", "keep_last", "num_workers", "log_every", "out")
# ds_config fields that follow from the above or from the world size (itself free to change on resume).
RESUMABLE_DS_KEYS = ("train_batch_size", "scheduler.params.total_num_steps", "scheduler.params.warmup_num_steps")


def fsync_directory(path: str | os.PathLike) -> None:
    """Make the entries of a directory (a rename, a new file) durable (where the file system can: some FUSE
    and network mounts refuse a directory fsync with EINVAL, and then there is nothing more to do)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one.

    The temporary file lives in the same directory (os.replace is atomic only within a file
    system) and is flushed to disk before the rename, and the rename is flushed after it, so a
    crash can leave neither a truncated file nor a missing one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses become dicts, paths become strings; used as json's `default`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable: {obj!r}")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` (dicts, lists, dataclasses, paths) as indented JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=to_jsonable) + "\n")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def config_changes(stored: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None,
                   resumable: Sequence[str] = RESUMABLE_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, stored value, current value) for every key (dotted for nested dicts) whose values differ, leaving
    out `resumable` ones. A key the stored config lacks (written by an older version) counts as its default in
    `defaults` when one is given."""
    stored, current = _flatten(stored), _flatten(current)
    defaults = _flatten(defaults or {})
    changes = []
    for key in sorted(set(stored) | set(current)):
        before = stored.get(key, defaults.get(key, "(absent)"))
        after = current.get(key, "(absent)")
        if key not in resumable and before != after:
            changes.append((key, before, after))
    return changes


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(args: Sequence[str]) -> str | None:
    """Output of a git command run in the source tree of this package, or None outside git."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def describe_environment(world_size: int) -> dict[str, Any]:
    """Versions, machine and code revision: what is needed to reproduce or explain a run."""
    commit = _git(["rev-parse", "HEAD"])
    dirty = _git(["status", "--porcelain", "--untracked-files=no"])
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "deepspeed": _package_version("deepspeed"),
        "transformers": _package_version("transformers"),
        "peft": _package_version("peft"),
        "cuda_available": _cuda_available(),
        "world_size": world_size,
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
    }


def _cuda_available() -> bool:
    import torch  # imported here so that describing paths does not need torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory (see the module docstring for the layout)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def ds_config(self) -> Path:
        return self.root / "ds_config.json"

    @property
    def command(self) -> Path:
        return self.root / "command.txt"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def describe(self, config: Any, ds_config: dict[str, Any], world_size: int,
                 argv: Sequence[str] | None = None) -> None:
        """Write config, ds_config, command line and environment summary (rank 0 only).

        `config` is the resolved training config (a dataclass or a dict). A requeued run calls
        this again: the files then describe the latest launch.
        """
        argv = sys.argv if argv is None else argv
        for folder in (self.root, self.tokenizer, self.tensorboard, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config, config)
        write_json_atomic(self.ds_config, ds_config)
        write_text_atomic(self.command, shlex.join([sys.executable, *argv]) + "\n")
        write_json_atomic(self.environment, describe_environment(world_size))
