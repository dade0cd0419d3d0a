"""The one training loop that pretraining and finetuning share.

A stage (pretraining, finetuning) is a `TrainingTask`: it knows its batches, its loss, its evaluation
and what to do at an epoch's end. This module owns everything else and does it the same way for both:
resume from the newest complete checkpoint, count optimizer steps over gradient accumulation, log,
evaluate and checkpoint every N steps, and stop cleanly on SIGUSR1/SIGTERM (checkpoint, then exit with
`REQUEUE_EXIT_CODE` so SLURM requeues the job and the same command resumes it).

The data position in a checkpoint is (epoch, micro-batches done in that epoch). A task's batches for an
epoch are a pure function of (seed, epoch), so a resumed run skips the batches it already trained on
and then sees exactly what the uninterrupted run saw.

Nothing trained is lost, and a resumed run is the run it claims to be:
- `preflight` (called before the run directory is described, i.e. before config.json is overwritten, and
  before any compute) refuses a relaunch whose settings differ from the stored config.json in a key that
  changes the run (run_dir.RESUMABLE_KEYS lists the ones that may change), and a data directory with a
  missing or short shard in any split.
- A checkpoint is written before anything long that could fail or be interrupted: when a save and an
  evaluation fall on the same step the save comes first, and the final save precedes the final
  evaluation. Evaluations run with the RNG states forked, so this order changes no number of the run.
- `best.json` is written only after the dev-best checkpoint exists (`task.record_best`).
- Signals: see preemption.py (step boundaries during training; at once inside `checkpointed()`).
- Decisions that rest on one rank's view (a new dev best, from rank 0's score) are broadcast from rank 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import torch

from recipe.checkpointing import CheckpointManager
from recipe.config import TrainConfig, to_dict
from recipe.dist import DistEnv, broadcast_buffers, broadcast_object, get_world_size, is_main
from recipe.preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from recipe.run_dir import RESUMABLE_DS_KEYS, RESUMABLE_KEYS, RunDir, config_changes
from recipe.run_logging import StepTimer, create_logger
from recipe.seeding import capture_rng_state, restore_rng_state
from sharded_data.format import ShardFilesError, load_index, verify_shard_files

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    batches_done_in_epoch: int = 0  # micro-batches of that epoch already trained on (this rank)


class TrainingTask(Protocol):
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per rank per epoch: the same on every rank, a multiple of grad_accum."""

    def epoch_batches(self, epoch: int, skip: int) -> Iterable[dict]:
        """This rank's micro-batches of `epoch`, after the first `skip` of them."""

    def compute_loss(self, engine: Any, batch: dict, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to backpropagate and scalars to log; `progress` = fraction of training done."""

    def after_optimizer_step(self, engine: Any) -> dict[str, float]:
        """Post-step housekeeping (e.g. clamp the temperature); returns scalars to log."""

    def evaluate(self, engine: Any, step: int, final: bool) -> dict[str, Any]:
        """Collective: dev (or, when final, dev and test) evaluation; metrics meaningful on rank 0."""

    def on_epoch_end(self, engine: Any, epoch: int) -> None:
        """Collective: called after each finished epoch (1-based count of finished epochs)."""


@dataclass
class TrainResult:
    state: TrainState
    final_metrics: dict[str, Any]
    checkpoint_tag: str


def without_global_rng_draws(batches: Iterable[dict]) -> Iterator[dict]:
    """The batches, fetched so that the loader cannot consume the global torch RNG (dropout's stream).

    torch's DataLoader draws its base seed from the global RNG when its iterator starts. A run resumed
    mid-epoch starts that iterator right after restoring the RNG state, where the uninterrupted run did
    not draw, so every later dropout mask (and loss) would differ. (Augmentation is seeded per sample.)
    """
    iterator = iter(batches)
    try:
        while True:
            with torch.random.fork_rng(devices=[]):
                batch = next(iterator, None)
            if batch is None:
                return
            yield batch
    finally:  # the loop broke off early (end of the step budget): stop the loader's workers now
        getattr(iterator, "close", lambda: None)()


class ConfigChangedError(SystemExit):
    """A relaunch into a run directory with a checkpoint, with settings that would make it another run."""


def _flag(key: str) -> str:
    return "--deepspeed_config" if key == "deepspeed_config" else "--" + key.replace("_", "-")


def check_resumed_config(config: TrainConfig, run: RunDir, ds_config: dict | None = None) -> None:
    """Refuse to resume `run` with settings that change it (collective: rank 0 reads, every rank raises).

    Only a run with a complete checkpoint is compared (before the first save there is nothing to resume). The
    stored config.json and ds_config.json are compared with `config` and the resolved `ds_config`, apart from
    RESUMABLE_KEYS / RESUMABLE_DS_KEYS. Keys a stored config lacks (an older version) count as their defaults.
    """
    problem = broadcast_object(_resume_problem(config, run, ds_config) if is_main() else None)
    if problem:
        raise ConfigChangedError(problem)


def _resume_problem(config: TrainConfig, run: RunDir, ds_config: dict | None) -> str | None:
    tag = CheckpointManager(run.checkpoints).latest_tag()
    if tag is None or not run.config.is_file():
        return None
    stored = json.loads(run.config.read_text())
    defaults = {field.name: field.default for field in dataclasses.fields(config)
                if field.default is not dataclasses.MISSING}
    changes = [f"{_flag(key)} ({key}: {before!r} -> {after!r})"
               for key, before, after in config_changes(stored, to_dict(config), defaults)]
    if ds_config is not None and run.ds_config.is_file():
        stored_ds = json.loads(run.ds_config.read_text())
        changes += [f"ds_config {key}: {before!r} -> {after!r}"
                    for key, before, after in config_changes(stored_ds, ds_config, resumable=RESUMABLE_DS_KEYS)]
    if not changes:
        return None
    return (f"{run.root} holds a checkpoint ({tag}) of a run made with other settings; resuming it with these "
            f"would train a different run than its config.json says:\n  " + "\n  ".join(changes)
            + "\nGive the run's original values, or write to a new --out. Settings that may change on resume: "
            + ", ".join(_flag(key) for key in RESUMABLE_KEYS) + " (and the number of ranks).")


def check_data(data: str | Path) -> None:
    """Every indexed shard of every split of `data` exists with its recorded size (collective: each rank
    checks its own view, since nodes may hold their own copies; any rank's finding stops every rank)."""
    problems = []
    for index_file in sorted(Path(data).glob("index-*.json")):
        try:
            verify_shard_files(data, load_index(data, index_file.name[len("index-"):-len(".json")]))
        except (ShardFilesError, ValueError) as error:
            problems.append(str(error))
    gathered = [problems]
    if get_world_size() > 1:
        gathered = [None] * get_world_size()
        torch.distributed.all_gather_object(gathered, problems)
    found = [f"rank {rank}: {problem}" if len(gathered) > 1 else problem
             for rank, rank_problems in enumerate(gathered) for problem in rank_problems]
    if found:
        raise SystemExit("the data directory is incomplete; nothing was computed:\n  " + "\n  ".join(found))


def preflight(config: TrainConfig, run: RunDir, ds_config: dict | None = None) -> None:
    """Before the run directory is described (config.json overwritten) and before any compute: the data is
    complete and a resumed run is the same run. Collective."""
    check_data(config.data)
    check_resumed_config(config, run, ds_config)


def planned_total_steps(config: TrainConfig, micro_batches_per_epoch: int) -> int:
    """Optimizer steps the run will take: --max-steps, else --epochs full epochs (the LR schedule's length)."""
    if config.max_steps > 0:
        return config.max_steps
    return config.epochs * (micro_batches_per_epoch // config.grad_accum)


def rng_neutral(function):
    """`function`, run so that it leaves every RNG stream as it found it (evaluation must not shift the
    training's dropout and augmentation draws: torch's DataLoader draws its base seed from the global RNG)."""
    def wrapped(*args, **kwargs):
        state = capture_rng_state()
        try:
            return function(*args, **kwargs)
        finally:
            restore_rng_state(state)
    return wrapped


def run_training(config: TrainConfig, env: DistEnv, run: RunDir, engine: Any, task: TrainingTask) -> TrainResult:
    """Train until the step budget is spent; resumable, preemptible. Call on every rank."""
    checkpoints = CheckpointManager(run.checkpoints, keep_last=config.keep_last)
    client_state = checkpoints.resume(engine)
    state = TrainState(**client_state["train_state"]) if client_state else TrainState()

    micro_per_epoch = task.micro_batches_per_epoch()
    steps_per_epoch = micro_per_epoch // config.grad_accum
    if steps_per_epoch < 1:
        raise SystemExit(
            f"{config.data}: an epoch holds {micro_per_epoch} micro-batches per rank, fewer than --grad-accum "
            f"{config.grad_accum}: lower --micro-batch-size/--grad-accum or use more data"
        )
    total_steps = planned_total_steps(config, micro_per_epoch)
    global_batch = config.micro_batch_size * config.grad_accum * env.world_size
    metrics_log = create_logger(run, total_steps=total_steps, initial_step=state.step, enabled=env.rank == 0)
    if client_state:
        metrics_log.message(f"resumed at step {state.step} (epoch {state.epoch}, batch {state.batches_done_in_epoch})")

    # Every rank must hold the same BatchNorm statistics before the network runs in eval mode on several ranks or
    # is saved: each rank's own running averages drift apart (see broadcast_buffers).
    def save() -> str:
        broadcast_buffers(engine.module)
        checkpoints.pinned = set(task.pinned_tags()) if hasattr(task, "pinned_tags") else set()
        return checkpoints.save(engine, state.step, {"train_state": asdict(state), "config": to_dict(config)})

    task_evaluate = rng_neutral(task.evaluate)

    def evaluate(final: bool) -> dict[str, Any]:
        broadcast_buffers(engine.module)
        metrics = task_evaluate(engine, state.step, final=final)
        # Rank 0 scored: its verdict, broadcast, makes every rank join (or skip) the save together.
        if broadcast_object(bool(metrics.pop("new_best", False))):
            save()  # the dev-best weights must exist as a checkpoint (pinned against pruning) ...
            if hasattr(task, "record_best"):
                task.record_best(state.step)  # ... before best.json names them
        return metrics

    stopper = PreemptionHandler()
    timer = StepTimer()
    final_metrics: dict[str, Any] = {}
    preempted = False
    try:
        while state.step < total_steps and not preempted:
            for batch in without_global_rng_draws(task.epoch_batches(state.epoch, skip=state.batches_done_in_epoch)):
                timer.batch_ready()
                loss, metrics = task.compute_loss(engine, batch, progress=state.step / total_steps)
                engine.backward(loss)
                at_boundary = engine.is_gradient_accumulation_boundary()
                engine.step()
                state.batches_done_in_epoch += 1
                if not at_boundary:
                    continue
                state.step += 1
                metrics.update(task.after_optimizer_step(engine))
                timer.step_done(global_batch)
                metrics_log.advance(state.step)
                if state.step % config.log_every == 0 or state.step == total_steps:
                    metrics_log.log(state.step, {"epoch": state.epoch, "loss": loss.detach(),
                                                 "lr": engine.get_lr()[0], **metrics, **timer.read()})
                epoch_done = state.batches_done_in_epoch >= micro_per_epoch
                if epoch_done:  # before any checkpoint of this step, so it records "next epoch, nothing done"
                    state.epoch += 1
                    state.batches_done_in_epoch = 0
                    broadcast_buffers(engine.module)  # trajectory recording embeds on every rank
                    task.on_epoch_end(engine, state.epoch)
                saved = bool(config.save_every) and state.step % config.save_every == 0
                if saved:
                    save()
                if config.eval_every and state.step % config.eval_every == 0 and state.step < total_steps:
                    preempted = stopper.should_stop()  # a signal during the save: no long evaluation now
                    if preempted:
                        break
                    # Just saved: a signal during the evaluation need not wait for the next step boundary.
                    with stopper.checkpointed() if saved else contextlib.nullcontext():
                        metrics_log.log_eval(state.step, evaluate(final=False))
                preempted = stopper.should_stop()  # collective: every rank gets the same answer
                if preempted or epoch_done or state.step >= total_steps:
                    break
            else:
                raise RuntimeError(
                    f"epoch {state.epoch} ended after {state.batches_done_in_epoch} of {micro_per_epoch} micro-batches: "
                    "the loader yielded fewer batches than it promised"
                )
        if preempted:
            tag = save()  # nothing if this step was just saved
            metrics_log.message(f"preempted: saved {tag}; exiting with {REQUEUE_EXIT_CODE} to be requeued")
            raise SystemExit(REQUEUE_EXIT_CODE)
        tag = save()  # the trained weights are on disk before the (long) final evaluation
        if stopper.should_stop():
            metrics_log.message(f"preempted after the final save ({tag}); exiting with {REQUEUE_EXIT_CODE}")
            raise SystemExit(REQUEUE_EXIT_CODE)
        with stopper.checkpointed():  # a signal now: exit, the requeued job redoes only this evaluation
            started = time.perf_counter()
            final_metrics = evaluate(final=True)
            final_metrics["eval_seconds"] = round(time.perf_counter() - started, 2)
        metrics_log.log_eval(state.step, final_metrics)
    finally:
        stopper.uninstall()
        metrics_log.close()
    return TrainResult(state=state, final_metrics=final_metrics, checkpoint_tag=tag)
