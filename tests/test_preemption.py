"""Preemption: a signal becomes a flag, all ranks stop on the same step, checkpoint, exit with
REQUEUE_EXIT_CODE, and the requeued run finishes with the losses of an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recipe.checkpointing import COMPLETE_MARKER, LATEST_FILE, CheckpointManager
from recipe.preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from tests.distributed import run_on_ranks
from recipe.dist import free_port
from tests.test_checkpointing import run_jobs_on_this_rank, run_jobs


def test_signal_sets_the_flag_and_uninstall_restores_the_previous_handler():
    previous = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler(signals=(signal.SIGUSR1, signal.SIGTERM)) as stopper:
        assert not stopper.should_stop() and stopper.received_signal is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stopper.should_stop()
        assert stopper.received_signal == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is previous


def _stop_step(rank: int, world_size: int) -> int:
    """Rank 1 alone gets the signal after iteration 3; returns the iteration where this rank stops."""
    stopper = PreemptionHandler(signals=(signal.SIGUSR1,), device="cpu")
    try:
        for iteration in range(1, 100):
            if rank == 1 and iteration == 3:
                os.kill(os.getpid(), signal.SIGUSR1)
            if stopper.should_stop():
                return iteration
            dist.barrier()  # the "training step"
        return -1
    finally:
        stopper.uninstall()


def test_ranks_agree_to_stop_on_the_same_step_when_only_one_got_the_signal():
    assert run_on_ranks(_stop_step, world_size=2) == [3, 3]


def _job_process(rank: int, world_size: int, port: int, jobs: list[dict]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    run_jobs_on_this_rank(rank, world_size, jobs)


def run_collecting_exit_codes(world_size: int, jobs: list[dict], timeout_s: float = 600) -> list[int | None]:
    """Like `run_jobs`, but returns every rank's exit status (which is the point under test here;
    torch's spawn reports only the first failure and terminates the other ranks)."""
    context = mp.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=_job_process, args=(rank, world_size, port, jobs))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():  # a hang: do not leave it behind
            process.kill()
            process.join()
    return [process.exitcode for process in processes]


def _losses(run_dir: Path, rank: int, start: int) -> dict[int, float]:
    return {int(step): value for step, value in
            json.loads((run_dir / f"losses-rank{rank}-from{start}.json").read_text()).items()}


@pytest.mark.slow
def test_preempted_run_checkpoints_exits_for_requeue_and_resumes_exactly(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    jobs = [dict(run_dir=str(reference), zero_stage=2, max_steps=6),
            # rank 1 alone receives SIGUSR1 after step 3 (as when a launcher reaches only some ranks)
            dict(run_dir=str(run), zero_stage=2, max_steps=6, signal_rank_at_step=(1, 3))]
    assert run_collecting_exit_codes(2, jobs) == [REQUEUE_EXIT_CODE, REQUEUE_EXIT_CODE]

    checkpoints = CheckpointManager(run / "checkpoints")
    assert checkpoints.complete_tags() == ["step-000003"]
    assert (run / "checkpoints" / LATEST_FILE).read_text() == "step-000003"
    assert json.loads((run / "checkpoints" / "step-000003" / COMPLETE_MARKER).read_text())["step"] == 3

    requeued = run_jobs(2, [dict(run_dir=str(run), zero_stage=2, max_steps=6)])
    for rank in range(2):
        uninterrupted = _losses(reference, rank, start=0)
        assert _losses(run, rank, start=0) == {s: uninterrupted[s] for s in (1, 2, 3)}
        assert requeued[rank][0]["losses"] == {s: uninterrupted[s] for s in (4, 5, 6)}
