"""Rank-0 logging (metrics.jsonl, TensorBoard, progress bar), the step timer, and the
self-describing run directory."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recipe.run_dir import RunDir, write_json_atomic
from recipe.run_logging import MetricsLogger, NullLogger, StepTimer, create_logger


def _scalars(run_dir: RunDir, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir.tensorboard))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _log_steps(run_dir: RunDir, steps: range, initial_step: int = 0) -> None:
    logger = create_logger(run_dir, total_steps=10, initial_step=initial_step)
    assert isinstance(logger, MetricsLogger)
    for step in steps:
        logger.advance(step)
        logger.log(step, {"epoch": 0, "loss": torch.tensor(1.0 / step), "lr": np.float32(0.5),
                          "temperature": 0.07})
    logger.log_eval(steps[-1], {"bleu4": 12.5})
    logger.close()


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    _log_steps(run_dir, range(1, 5))
    lines = [json.loads(line) for line in run_dir.metrics.read_text().splitlines()]
    train = [line for line in lines if "eval" not in line]
    assert [line["step"] for line in train] == [1, 2, 3, 4]
    assert train[1]["loss"] == 0.5 and train[1]["lr"] == 0.5 and train[1]["temperature"] == 0.07
    assert lines[-1]["eval"] == {"bleu4": 12.5}
    assert [s for s, _ in _scalars(run_dir, "train/loss")] == [1, 2, 3, 4]
    assert _scalars(run_dir, "train/loss")[3][1] == 0.25
    assert _scalars(run_dir, "eval/bleu4") == [(4, 12.5)]


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    _log_steps(run_dir, range(1, 6))  # preempted after step 5, checkpoint at step 3
    with open(run_dir.metrics, "a") as f:
        f.write('{"step": 6, "lo')  # the line being written when the job was killed
    _log_steps(run_dir, range(4, 7), initial_step=3)
    steps = [json.loads(line)["step"] for line in run_dir.metrics.read_text().splitlines()
             if "eval" not in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_other_ranks_get_a_logger_that_writes_nothing(tmp_path):
    logger = create_logger(tmp_path / "run", total_steps=10, enabled=False)
    assert isinstance(logger, NullLogger)
    logger.advance(1)
    logger.log(1, {"loss": 1.0})
    logger.message("hello")
    logger.close()
    assert not (tmp_path / "run").exists()


def test_step_timer_separates_data_wait_from_throughput():
    timer = StepTimer()
    for _ in range(2):
        time.sleep(0.05)  # waiting for the data loader
        timer.batch_ready()
        time.sleep(0.01)  # the step itself
        timer.step_done(num_samples=8)
    reading = timer.read()
    assert 0.05 <= reading["data_wait_s"] < 0.06 + 0.5  # generous upper bound: a busy CI machine
    assert reading["step_time_s"] >= 0.06
    assert 0 < reading["samples_per_s"] <= 8 / 0.06
    assert timer.read()["samples_per_s"] == 0.0  # the window restarts after each read


@dataclass
class _Config:
    lr: float
    data: Path


def test_run_directory_describes_itself(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.describe(_Config(lr=1e-4, data=Path("/data/shards")), {"zero_optimization": {"stage": 2}},
                     world_size=2, argv=["recipe/pretrain.py", "--lr", "1e-4"])
    assert json.loads(run_dir.config.read_text()) == {"lr": 1e-4, "data": "/data/shards"}
    assert json.loads(run_dir.ds_config.read_text())["zero_optimization"]["stage"] == 2
    assert run_dir.command.read_text().strip().endswith("recipe/pretrain.py --lr 1e-4")
    environment = json.loads(run_dir.environment.read_text())
    assert environment["world_size"] == 2
    assert torch.__version__.startswith(environment["torch"])
    assert environment["deepspeed"] and environment["transformers"]
    for folder in (run_dir.tokenizer, run_dir.tensorboard, run_dir.checkpoints):
        assert folder.is_dir()


def test_atomic_json_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": [1, 2]})
    assert json.loads(target.read_text()) == {"b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
