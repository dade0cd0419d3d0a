"""Checkpoints: exact resume under ZeRO-2/3 on 2 gloo ranks, crash safety, pruning, and resuming a
2-rank checkpoint on 1 rank through DeepSpeed's universal checkpoint.

`train_worker` is a complete miniature of the recipe's training loop (seeding, DeepSpeed engine,
a data stream whose position lives in the checkpoint, per-rank randomness in dropout and in the
targets, LR warmup, preemption, periodic and final checkpoints); test_preemption.py reuses it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recipe.checkpointing import COMPLETE_MARKER, LATEST_FILE, CheckpointManager, step_tag
from recipe.checkpointing import main as checkpointing_main
from recipe.preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from recipe.seeding import capture_rng_state, restore_rng_state, seed_everything
from tests.distributed import run_on_ranks

MICRO_BATCH = 4
FEATURES = 8


class TinyRegressor(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DataStream:
    """Deterministic global batches; `position` counts optimizer steps consumed (global, so it
    means the same at any world size); rank r reads micro batch `slot` r of the global batch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.position = 0

    def micro_batch(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.position * 101 + slot)
        x = torch.randn(MICRO_BATCH, FEATURES, generator=gen)
        y = x.sum(dim=1, keepdim=True).sin()
        return x, y

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def ds_config(zero_stage: int, world_size: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "train_batch_size": MICRO_BATCH * world_size,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01, "torch_adam": True}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-2,
                                                     "warmup_num_steps": 4, "warmup_type": "linear"}},
        "zero_optimization": {"stage": zero_stage},
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "steps_per_print": 10_000,
        "wall_clock_breakdown": False,
    }


def full_parameters(engine) -> dict[str, torch.Tensor]:
    """Every parameter in full (ZeRO-3 partitions are gathered; a no-op at other stages)."""
    import deepspeed

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: p.detach().clone() for name, p in params.items()}


def train_worker(rank: int, world_size: int, run_dir: str, zero_stage: int, max_steps: int,
                 save_every: int = 0, keep_last: int = 2,
                 signal_rank_at_step: tuple[int, int] | None = None, stop_at: int | None = None) -> dict:
    """Train to `max_steps` (resuming from run_dir's checkpoints if any); returns losses by step.

    `signal_rank_at_step=(r, k)`: rank r sends itself SIGUSR1 after step k (a preemption).
    `stop_at`: leave the loop after that step (the final checkpoint is still saved), as a job
    whose time ran out would. Losses are also written to run_dir before any exit, because a
    preempted worker exits with REQUEUE_EXIT_CODE instead of returning."""
    import deepspeed

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    deepspeed.init_distributed(dist_backend="gloo")
    seed_everything(1234)  # identical initial weights on every rank
    model = TinyRegressor(dropout=0.2)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=ds_config(zero_stage, world_size))
    seed_everything(1234 + 1 + rank)  # per-rank streams: dropout masks and target noise differ

    ckpt = CheckpointManager(run_dir / "checkpoints", keep_last=keep_last)
    stream = DataStream(seed=7)
    state = ckpt.resume(engine)
    step = 0
    resumed_params = None
    if state is not None:
        step = state["step"]
        stream.load_state_dict(state["data"])
        resumed_params = full_parameters(engine)
        assert state["config"] == {"zero_stage": zero_stage}  # client_state round trip

    def client_state() -> dict:
        return {"data": stream.state_dict(), "config": {"zero_stage": zero_stage}}

    def record(losses: dict) -> None:
        (run_dir / f"losses-rank{rank}-from{0 if state is None else state['step']}.json").write_text(
            json.dumps(losses))

    losses: dict[int, float] = {}
    stopper = PreemptionHandler(signals=(signal.SIGUSR1,))
    try:
        while step < max_steps and (stop_at is None or step < stop_at):
            x, y = stream.micro_batch(rank)
            # target noise from NumPy's global generator: restored from the checkpoint or not
            y = y + 0.05 * torch.from_numpy(np.random.standard_normal(y.shape)).float()
            loss = nn.functional.mse_loss(engine(x), y)  # dropout: torch's generator
            engine.backward(loss)
            engine.step()
            stream.position += 1
            step += 1
            losses[step] = loss.item()
            if signal_rank_at_step == (rank, step):
                os.kill(os.getpid(), signal.SIGUSR1)
            if stopper.should_stop():
                record(losses)
                ckpt.save(engine, step, client_state())
                raise SystemExit(REQUEUE_EXIT_CODE)
            if save_every and step % save_every == 0:
                ckpt.save(engine, step, client_state())
        record(losses)
        ckpt.save(engine, step, client_state())
    finally:
        stopper.uninstall()
    return {"losses": losses, "resumed_params": resumed_params, "final_params": full_parameters(engine),
            "global_steps": engine.global_steps}


def run_jobs(world_size: int, jobs: list[dict]) -> list[list[dict]]:
    """Run `train_worker(**job)` for each job, one after the other, in the same `world_size` fresh
    processes; results[rank][job]. Several jobs share one start because each process pays ~10 s
    to start (DeepSpeed's optimizer setup imports torch._dynamo)."""
    return run_on_ranks(run_jobs_on_this_rank, world_size=world_size, init_process_group=False, args=(jobs,))


def run_jobs_on_this_rank(rank: int, world_size: int, jobs: list[dict]) -> list[dict]:
    return [train_worker(rank, world_size, **job) for job in jobs]


# --------------------------------------------------------------------------- fast, one process
def test_rng_state_round_trip_covers_python_numpy_torch():
    import random

    seed_everything(5)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(99)  # move every generator elsewhere
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def _fake_tag(directory: Path, step: int, complete: bool, world_size: int = 2) -> None:
    tag_dir = directory / step_tag(step)
    tag_dir.mkdir(parents=True)
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (tag_dir / COMPLETE_MARKER).write_text(json.dumps({"step": step, "world_size": world_size}))


def test_latest_tag_ignores_partial_saves_and_a_stale_latest_file(tmp_path, caplog):
    _fake_tag(tmp_path, 2, complete=True)
    _fake_tag(tmp_path, 10, complete=True)  # sorts by step, not by name length
    _fake_tag(tmp_path, 12, complete=False)  # a save that crashed before its marker
    (tmp_path / "step-000012-universal").mkdir()  # not an ordinary tag
    (tmp_path / LATEST_FILE).write_text("step-000012")  # written by a non-atomic writer

    ckpt = CheckpointManager(tmp_path, keep_last=2)
    assert ckpt.complete_tags() == ["step-000002", "step-000010"]
    assert ckpt.partial_tags() == ["step-000012"]
    with caplog.at_level(logging.WARNING, logger="recipe.checkpointing"):
        assert ckpt.latest_tag() == "step-000010"
    assert "step-000012" in caplog.text

    (tmp_path / LATEST_FILE).write_text("step-000010\n")
    assert ckpt.latest_tag() == "step-000010"
    assert CheckpointManager(tmp_path / "missing").latest_tag() is None


def test_keep_last_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=-1)


# --------------------------------------------------------------------------- 2 gloo ranks
STAGES = (2, 3)


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory) -> dict:
    """For ZeRO-2 and ZeRO-3: A = 6 steps uninterrupted (checkpoints every 2 steps, keep 2);
    B = the same run stopped after 3 steps (checkpoint step-000003); then, in new processes,
    C = B resumed to step 6, with a crashed save (step-000005 without marker) lying around."""
    root = tmp_path_factory.mktemp("resume")
    first_jobs, resume_jobs = [], []
    for stage in STAGES:
        first_jobs.append(dict(run_dir=str(root / f"A{stage}"), zero_stage=stage, max_steps=6, save_every=2))
        first_jobs.append(dict(run_dir=str(root / f"B{stage}"), zero_stage=stage, max_steps=6, stop_at=3))
        resume_jobs.append(dict(run_dir=str(root / f"B{stage}"), zero_stage=stage, max_steps=6))
    first = run_jobs(2, first_jobs)

    for stage in STAGES:  # a save of step 5 that died before its marker: resume must skip it
        checkpoints = root / f"B{stage}" / "checkpoints"
        shutil.copytree(checkpoints / "step-000003", checkpoints / "step-000005")
        (checkpoints / "step-000005" / COMPLETE_MARKER).unlink()
    resumed = run_jobs(2, resume_jobs)

    results = {}
    for i, stage in enumerate(STAGES):
        results[stage] = {
            "root": root,
            "A": [first[rank][2 * i] for rank in range(2)],
            "B": [first[rank][2 * i + 1] for rank in range(2)],
            "C": [resumed[rank][i] for rank in range(2)],
        }
    return results


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_resume_reproduces_uninterrupted_training_exactly(resume_runs, stage):
    runs = resume_runs[stage]
    for rank in range(2):
        a, b, c = runs["A"][rank], runs["B"][rank], runs["C"][rank]
        assert sorted(a["losses"]) == [1, 2, 3, 4, 5, 6]
        assert b["losses"] == {s: a["losses"][s] for s in (1, 2, 3)}
        assert c["losses"] == {s: a["losses"][s] for s in (4, 5, 6)}  # bit-identical
        assert c["global_steps"] == a["global_steps"] == 6
        for name, value in a["final_params"].items():
            assert torch.equal(c["final_params"][name], value), name
        # what was loaded is exactly what B saved
        for name, value in b["final_params"].items():
            assert torch.equal(c["resumed_params"][name], value), name
    # the two ranks drew different dropout masks / noise (otherwise RNG restore is not tested)
    assert runs["A"][0]["losses"] != runs["A"][1]["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_checkpoint_directory_is_complete_pruned_and_atomic(resume_runs, stage):
    root = resume_runs[stage]["root"]
    a = CheckpointManager(root / f"A{stage}" / "checkpoints", keep_last=2)
    assert a.complete_tags() == ["step-000004", "step-000006"]  # step-000002 pruned (keep 2)
    assert (a.directory / LATEST_FILE).read_text() == "step-000006"
    for tag in a.complete_tags():
        marker = json.loads((a.directory / tag / COMPLETE_MARKER).read_text())
        assert marker["world_size"] == 2 and marker["zero_stage"] == stage
        assert sorted(p.name for p in (a.directory / tag).glob("rng-rank*.pt")) == [
            "rng-rank00000.pt", "rng-rank00001.pt"]
    assert not list(a.directory.glob("**/*.tmp")) and not list(a.directory.glob(".latest*"))

    b = CheckpointManager(root / f"B{stage}" / "checkpoints", keep_last=2)
    # the crashed step-000005 was ignored by resume and removed once step-000006 was complete
    assert b.complete_tags() == ["step-000003", "step-000006"] and b.partial_tags() == []


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank_through_universal_checkpoint(resume_runs, tmp_path):
    jobs = []
    for stage in STAGES:
        run_dir = tmp_path / f"U{stage}"
        (run_dir / "checkpoints").mkdir(parents=True)
        source = resume_runs[stage]["root"] / f"B{stage}" / "checkpoints" / "step-000003"
        shutil.copytree(source, run_dir / "checkpoints" / "step-000003")
        jobs.append(dict(run_dir=str(run_dir), zero_stage=stage, max_steps=6))
    # ZeRO-3: converted beforehand with the offline command; ZeRO-2: converted by resume() itself
    checkpointing_main([str(tmp_path / "U3" / "checkpoints"), "--tag", "step-000003"])
    assert (tmp_path / "U3" / "checkpoints" / "latest_universal").read_text() == "step-000003-universal"
    assert not (tmp_path / "U2" / "checkpoints" / "step-000003-universal").exists()
    results = run_jobs(1, jobs)[0]

    for stage, result in zip(STAGES, results):
        saved = resume_runs[stage]["B"][0]["final_params"]
        for name, value in saved.items():  # parameters after the 2 -> 1 rank load: exactly as saved
            assert torch.equal(result["resumed_params"][name], value), name
        assert sorted(result["losses"]) == [4, 5, 6]
        assert all(np.isfinite(v) for v in result["losses"].values())
        assert result["global_steps"] == 6  # DeepSpeed's step counter came from the checkpoint
        checkpoints = tmp_path / f"U{stage}" / "checkpoints"
        assert (checkpoints / "step-000003-universal" / COMPLETE_MARKER).is_file()
        assert json.loads((checkpoints / "step-000006" / COMPLETE_MARKER).read_text())["world_size"] == 1
