"""The one training loop that pretraining and finetuning share.

A stage (pretraining, finetuning) is a `TrainingTask`: it knows its batches, its loss, its evaluation
and what to do at an epoch's end. This module owns everything else and does it the same way for both:
resume from the newest complete checkpoint, count optimizer steps over gradient accumulation, log,
evaluate and checkpoint every N steps, and stop cleanly on SIGUSR1/SIGTERM (checkpoint, then exit with
`REQUEUE_EXIT_CODE` so SLURM requeues the job and the same command resumes it).

The data position in a checkpoint is (epoch, micro-batches done in that epoch). A task's batches for an
epoch are a pure function of (seed, epoch), so a resumed run skips the batches it already trained on
and then sees exactly what the uninterrupted run saw.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Protocol

import torch

from recipe.checkpointing import CheckpointManager
from recipe.config import TrainConfig, to_dict
from recipe.dist import DistEnv, broadcast_buffers
from recipe.preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from recipe.run_dir import RunDir
from recipe.run_logging import StepTimer, create_logger

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


def planned_total_steps(config: TrainConfig, micro_batches_per_epoch: int) -> int:
    """Optimizer steps the run will take: --max-steps, else --epochs full epochs (the LR schedule's length)."""
    if config.max_steps > 0:
        return config.max_steps
    return config.epochs * (micro_batches_per_epoch // config.grad_accum)


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

    def evaluate(final: bool) -> dict[str, Any]:
        broadcast_buffers(engine.module)
        metrics = task.evaluate(engine, state.step, final=final)
        if metrics.pop("new_best", False):
            save()  # the dev-best weights must exist as a checkpoint, and are pinned against pruning
        return metrics

    stopper = PreemptionHandler()
    timer = StepTimer()
    final_metrics: dict[str, Any] = {}
    try:
        while state.step < total_steps:
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
                if config.eval_every and state.step % config.eval_every == 0 and state.step < total_steps:
                    metrics_log.log_eval(state.step, evaluate(final=False))
                if config.save_every and state.step % config.save_every == 0:
                    save()
                if stopper.should_stop():
                    tag = save()
                    metrics_log.message(f"preempted: saved {tag}; exiting with {REQUEUE_EXIT_CODE} to be requeued")
                    raise SystemExit(REQUEUE_EXIT_CODE)
                if epoch_done or state.step >= total_steps:
                    break
            else:
                raise RuntimeError(
                    f"epoch {state.epoch} ended after {state.batches_done_in_epoch} of {micro_per_epoch} micro-batches: "
                    "the loader yielded fewer batches than it promised"
                )
        started = time.perf_counter()
        final_metrics = evaluate(final=True)
        final_metrics["eval_seconds"] = round(time.perf_counter() - started, 2)
        metrics_log.log_eval(state.step, final_metrics)
        tag = save()
    finally:
        stopper.uninstall()
        metrics_log.close()
    return TrainResult(state=state, final_metrics=final_metrics, checkpoint_tag=tag)
