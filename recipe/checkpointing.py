"""Tagged DeepSpeed checkpoints that survive crashes, keep the last K, and resume exactly.

    ckpt = CheckpointManager(run_dir.checkpoints, keep_last=3)
    state = ckpt.resume(engine)                    # None on a fresh run; all ranks call it
    start_step = 0 if state is None else state["step"]
    ...
    ckpt.save(engine, step, {"epoch": e, "data": sampler.state_dict(), "config": asdict(cfg)})

Layout of `checkpoints/` (tags are "step-000120": zero-padded so that names sort by step):

    step-000120/                  DeepSpeed's files (model states, ZeRO optimizer partitions)
        rng-rank00000.pt ...      per-rank RNG state (Python, NumPy, torch), one file per rank
        complete.json             written last, by rank 0, once every rank has finished saving
    step-000120-universal/        a universal copy, made when resuming on another world size
    latest                        the newest complete tag (atomic: temporary file + os.replace)

What `save()` stores: DeepSpeed's model/optimizer/scheduler state, plus `client_state` (whatever
the caller passes: epoch, sampler or data position, resolved config) with "step" and "world_size"
added, plus `{"universal_checkpoint_info": {}}` which `ds_to_universal` requires. DeepSpeed writes
client_state only into the model-states file of rank 0 (ZeRO-1/2) or of each rank (ZeRO-3), and
under ZeRO-1/2 every rank loads rank 0's; RNG states differ per rank, so each rank writes its own
small file.

Crash safety (a kill at any moment leaves a loadable checkpoint): a tag only counts once
`complete.json` exists, and `complete.json` is written after a barrier that every rank reaches only
when its files are on disk: DeepSpeed does not fsync what it saves, so every rank fsyncs the tag's
files (and the directory) first. The marker and `latest` are written atomically and fsynced. A
marker that is empty or torn (a crash of a file system that did not honour that) makes its tag
incomplete, not unreadable: resume falls back to the previous complete tag. DeepSpeed's own `latest`
is disabled (`save_latest=False`): it is written before the other ranks are known to be done.
`resume()` takes the newest complete tag and warns about any newer tag without a marker (a save
interrupted by a crash); the next save of that step replaces it. Old tags beyond `keep_last` are
deleted by rank 0 only after the new marker is durable, marker first, so a tag half-deleted by a
kill is never taken for a complete one.

Decisions that rest on reading the file system (is this step already saved, which tag is the newest
complete one) are taken by rank 0 and broadcast: with NFS attribute caching two ranks can read the
same directory differently, and a rank that decided otherwise would hang the others in a barrier.

What is unpickled: DeepSpeed loads its own checkpoint files with `torch.load(weights_only=False)`, so
a checkpoint directory must be trusted like code (README, "What you must trust"). This module's own
reads (RNG states, buffers) use `weights_only=True`.

Resuming on a different world size (e.g. 16 GPUs -> 8) uses DeepSpeed's universal checkpoint:
`resume()` notices that the newest tag was saved by another world size and converts it once with
`convert_to_universal` (the Python API of `python -m deepspeed.checkpoint.ds_to_universal
--input_folder checkpoints/step-000120 --output_folder checkpoints/step-000120-universal`) on rank 0,
while the other ranks wait in a barrier; for a large model convert beforehand, offline:

    python -m recipe.checkpointing RUN/checkpoints --tag step-000120 --workers 8

It then loads the copy with DeepSpeed's `"checkpoint": {"load_universal": true}` switched on for
that one load (and off for ordinary loads, whatever the ds_config says, since a native tag cannot
be loaded in universal mode). Parameters (bit-exact, tested), optimizer and scheduler state and
the step counter carry over; per-rank RNG states cannot (ranks do not correspond), so they stay as
seeded and a warning says so. The caller's data position must therefore be global (samples or global batches seen).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import numpy as np

from recipe.dist import broadcast_object
from recipe.run_dir import fsync_directory, write_json_atomic, write_text_atomic
from recipe.seeding import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "complete.json"
LATEST_FILE = "latest"
CLIENT_STATE_KEY = "recipe_client_state"
UNIVERSAL_SUFFIX = "-universal"
_TAG_PATTERN = re.compile(r"^step-(\d+)$")


def step_tag(step: int) -> str:
    """The checkpoint tag of a step: "step-000120"."""
    return f"step-{step:06d}"


def tag_step(tag: str) -> int | None:
    """The step of an ordinary tag ("step-000120" -> 120); None for any other name."""
    match = _TAG_PATTERN.match(tag)
    return int(match.group(1)) if match else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rng_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rng-rank{rank:05d}.pt"


def read_marker(tag_dir: Path) -> dict[str, Any] | None:
    """The completion marker of a tag directory, or None if the save never finished (or the marker is torn)."""
    path = Path(tag_dir) / COMPLETE_MARKER
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or not {"step", "world_size"} <= marker.keys():
        logger.warning("%s is empty or torn (%d bytes): %s counts as an incomplete checkpoint", path, len(text),
                       Path(tag_dir).name)
        return None
    return marker


# An RNG file holds NumPy's generator state (a uint32 array): these are the only non-tensor types it needs.
_NUMPY_CORE = getattr(np, "_core", None) or np.core
_RNG_SAFE_GLOBALS = [_NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rng_file(path: Path) -> dict[str, Any]:
    with torch.serialization.safe_globals(_RNG_SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the directories themselves (DeepSpeed never fsyncs)."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in sorted({path.parent for path in directory.rglob("*")} | {directory, directory.parent}):
        fsync_directory(folder)


def convert_to_universal(checkpoint_dir: str | Path, tag: str, num_workers: int = 1) -> str:
    """Convert `checkpoint_dir/tag` into a DeepSpeed universal checkpoint `tag-universal` next to
    it (loadable at any world size with "load_universal"); returns the new tag. Single process:
    call it on one rank (or offline). Idempotent: an already complete conversion is kept.

    `num_workers` > 1 extracts ZeRO shards in a process pool (faster for big models).
    """
    from deepspeed.checkpoint import ds_to_universal

    checkpoint_dir = Path(checkpoint_dir)
    source = checkpoint_dir / tag
    marker = read_marker(source)
    if marker is None:
        raise FileNotFoundError(f"{source} is not a complete checkpoint (no {COMPLETE_MARKER}); "
                                f"pick a complete tag from {checkpoint_dir}")
    universal_tag = tag + UNIVERSAL_SUFFIX
    target = checkpoint_dir / universal_tag
    if read_marker(target) is not None:
        return universal_tag
    shutil.rmtree(target, ignore_errors=True)  # a conversion interrupted earlier
    ds_to_universal.main(Namespace(input_folder=str(source), output_folder=str(target),
                                   num_extract_workers=num_workers, num_merge_workers=max(1, num_workers // 2),
                                   keep_temp_folder=False, strict=True, inject_missing_state=False))
    write_json_atomic(target / COMPLETE_MARKER, {**marker, "universal": True, "source_tag": tag})
    write_text_atomic(checkpoint_dir / "latest_universal", universal_tag)  # what DeepSpeed reads
    return universal_tag


def _restore_buffers(module: torch.nn.Module, tag_dir: Path) -> None:
    """Copy buffers (BatchNorm running statistics, ...) from a native tag into `module`.

    A universal load restores parameters and optimizer state only: DeepSpeed skips the module state
    there, so without this the buffers would come back as initialised. Buffers are replicated on every
    rank (never partitioned), so rank 0's model-states file holds them all.
    """
    states = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"{tag_dir}: no mp_rank_00_model_states.pt to take the buffers from")
    saved = torch.load(states[0], map_location="cpu", weights_only=True)["module"]
    for name, buffer in module.named_buffers():
        if name not in saved:
            raise KeyError(f"{states[0]} has no buffer {name!r}: it was saved from another model")
        with torch.no_grad():
            buffer.copy_(saved[name].to(buffer.device, buffer.dtype))


@dataclass
class CheckpointManager:
    """Saves and resumes tagged DeepSpeed checkpoints under one directory (see module docstring).

    All methods that take an engine are collectives: call them on every rank. The directory
    must be on a file system that every rank sees (as DeepSpeed itself assumes).
    """

    directory: Path
    keep_last: int = 3
    """How many complete checkpoints to keep (older ones are deleted); 0 keeps all."""
    pinned: set[str] = field(default_factory=set)
    """Tags never pruned (e.g. the dev-best checkpoint of a finetuning run)."""

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if self.keep_last < 0:
            raise ValueError(f"keep_last must be >= 0 (0 keeps every checkpoint), got {self.keep_last}")

    # ----------------------------------------------------------------------------- listing
    def complete_tags(self) -> list[str]:
        """Ordinary tags whose save finished, oldest first."""
        return [tag for tag in self._tags() if read_marker(self.directory / tag) is not None]

    def partial_tags(self) -> list[str]:
        """Ordinary tags without a completion marker (interrupted saves), oldest first."""
        return [tag for tag in self._tags() if read_marker(self.directory / tag) is None]

    def _tags(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        tags = [p.name for p in self.directory.iterdir() if p.is_dir() and tag_step(p.name) is not None]
        return sorted(tags, key=tag_step)

    def latest_tag(self) -> str | None:
        """The newest complete tag. The `latest` file is trusted only if it names a complete tag."""
        latest_file = self.directory / LATEST_FILE
        complete = self.complete_tags()
        if latest_file.is_file():
            named = latest_file.read_text().strip()
            if named in complete and named == complete[-1]:
                return named
            logger.warning("%s names %r but the newest complete checkpoint is %r; using the latter",
                           latest_file, named, complete[-1] if complete else None)
        return complete[-1] if complete else None

    # ----------------------------------------------------------------------------- saving
    def save(self, engine: Any, step: int, client_state: dict[str, Any] | None = None) -> str:
        """Save a checkpoint tagged `step_tag(step)` on every rank; returns the tag.

        `client_state` is stored as given (plus "step", "world_size", "universal_checkpoint_info")
        and comes back from `resume()`. Saving a step that already has a complete checkpoint
        (e.g. the final save right after a periodic one) does nothing.
        """
        tag = step_tag(step)
        tag_dir = self.directory / tag
        if broadcast_object(read_marker(tag_dir) is not None if _rank() == 0 else None):
            return tag  # rank 0's reading, on every rank: a rank that read otherwise would wait alone below
        if _rank() == 0:
            shutil.rmtree(tag_dir, ignore_errors=True)  # leftovers of a save that crashed
        _barrier()

        state = dict(client_state or {})
        for reserved in ("step", "world_size"):
            if reserved in state:
                raise KeyError(f"client_state key {reserved!r} is set by CheckpointManager.save; rename it")
        state["step"] = step
        state["world_size"] = _world_size()
        # Our keys live under one name so that resume() returns exactly them, not DeepSpeed's
        # bookkeeping (param_shapes, ds_config, ...) that comes back in the same dict.
        ds_client_state = {CLIENT_STATE_KEY: state, "universal_checkpoint_info": {}}  # ds_to_universal needs it

        started = time.perf_counter()
        engine.save_checkpoint(str(self.directory), tag=tag, client_state=ds_client_state, save_latest=False)
        rng_file = _rng_file(tag_dir, _rank())
        tmp = rng_file.with_suffix(".tmp")
        torch.save(capture_rng_state(), tmp)
        tmp.replace(rng_file)
        _fsync_tree(tag_dir)
        _barrier()  # every rank's files are on disk: now the tag may be declared complete

        if _rank() == 0:
            write_json_atomic(tag_dir / COMPLETE_MARKER, {
                "tag": tag, "step": step, "world_size": _world_size(),
                "zero_stage": engine.zero_optimization_stage(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - started, 3),
            })
            write_text_atomic(self.directory / LATEST_FILE, tag)
            self._prune()
        _barrier()  # nobody exits (e.g. after preemption) before the marker exists
        logger.info("Saved checkpoint %s", tag_dir)
        return tag

    def _prune(self) -> None:
        """Delete complete tags beyond keep_last, their universal copies, and interrupted saves
        older than the newest complete tag."""
        complete = self.complete_tags()
        doomed = [tag for tag in (complete[:-self.keep_last] if self.keep_last else []) if tag not in self.pinned]
        newest_step = tag_step(complete[-1]) if complete else -1
        doomed += [tag for tag in self.partial_tags() if tag_step(tag) < newest_step]
        for tag in doomed:
            for tag_dir in (self.directory / tag, self.directory / (tag + UNIVERSAL_SUFFIX)):
                # The marker goes first (and durably): a kill in the middle of rmtree then leaves a partial
                # tag, which resume ignores, never a "complete" one with files missing.
                (tag_dir / COMPLETE_MARKER).unlink(missing_ok=True)
                if tag_dir.is_dir():
                    fsync_directory(tag_dir)
                shutil.rmtree(tag_dir, ignore_errors=True)

    # ----------------------------------------------------------------------------- resuming
    def resume(self, engine: Any, tag: str | None = None) -> dict[str, Any] | None:
        """Load the newest complete checkpoint (or `tag`) into `engine` and restore this rank's RNG
        state; returns the client_state given to `save()`, or None when there is nothing to resume.

        Call it after deepspeed.initialize, on every rank. A checkpoint from another world size is
        converted to a universal checkpoint first (see module docstring).
        """
        if tag is None:
            if _rank() == 0:
                for partial in self.partial_tags():
                    logger.warning("Ignoring incomplete checkpoint %s (no %s: the save was interrupted)",
                                   self.directory / partial, COMPLETE_MARKER)
            tag = broadcast_object(self.latest_tag() if _rank() == 0 else None)  # one answer for every rank
            if tag is None:
                return None
        marker = broadcast_object(read_marker(self.directory / tag) if _rank() == 0 else None)
        if marker is None:
            raise FileNotFoundError(f"{self.directory / tag} is not a complete checkpoint (no {COMPLETE_MARKER}); "
                                    f"complete ones: {self.complete_tags()}")

        same_world = marker["world_size"] == _world_size()
        load_tag = tag
        if not same_world:
            logger.warning("Checkpoint %s was saved by %d ranks, this run has %d: loading it as a "
                           "universal checkpoint", tag, marker["world_size"], _world_size())
            if _rank() == 0:
                convert_to_universal(self.directory, tag)
            _barrier()
            load_tag = tag + UNIVERSAL_SUFFIX

        # DeepSpeed reads "load_universal" from its config at load time only; set it for this load
        # so that native and universal tags both load whatever the ds_config says.
        config = engine._config
        configured = config.load_universal_checkpoint
        config.load_universal_checkpoint = not same_world
        try:
            load_path, client_state = engine.load_checkpoint(str(self.directory), tag=load_tag,
                                                             load_optimizer_states=True,
                                                             load_lr_scheduler_states=True)
        finally:
            config.load_universal_checkpoint = configured
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.directory / load_tag}")

        if not same_world:
            _restore_buffers(engine.module, self.directory / tag)
        rng_file = _rng_file(self.directory / tag, _rank())
        if same_world:
            restore_rng_state(load_rng_file(rng_file))
        else:
            logger.warning("RNG states are per rank and cannot carry over to another world size; "
                           "they stay as seeded")
        state = client_state[CLIENT_STATE_KEY]
        logger.info("Resumed from %s (step %d)", self.directory / load_tag, state["step"])
        return state


def main(argv: list[str] | None = None) -> None:
    """Offline universal conversion, so a large model's resume on a new world size need not wait."""
    import argparse

    parser = argparse.ArgumentParser(description="Convert a checkpoint to a DeepSpeed universal checkpoint "
                                                 "(loadable at any world size).")
    parser.add_argument("checkpoint_dir", type=Path, help="RUN/checkpoints")
    parser.add_argument("--tag", help="tag to convert (default: the newest complete one)")
    parser.add_argument("--workers", type=int, default=1, help="processes extracting ZeRO shards")
    args = parser.parse_args(argv)
    tag = args.tag or CheckpointManager(args.checkpoint_dir).latest_tag()
    if tag is None:
        parser.error(f"no complete checkpoint in {args.checkpoint_dir}")
    print(args.checkpoint_dir / convert_to_universal(args.checkpoint_dir, tag, num_workers=args.workers))


if __name__ == "__main__":
    main()
