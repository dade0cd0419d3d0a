"""recipe.dist: every launcher's variables map to the same DistEnv; helpers behave on real ranks."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe import dist as rdist
from recipe.dist import DistEnv, first_slurm_host
from tests.distributed import run_on_ranks

REPO = Path(__file__).resolve().parents[1]


def test_no_launcher_is_one_process():
    assert DistEnv.from_environ({}) == DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher="none")
    assert DistEnv.from_environ({}, local_rank_arg=-1).world_size == 1


def test_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.7",
           "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x", "GROUP_RANK": "1"}
    assert DistEnv.from_environ(env) == DistEnv(3, 4, 1, 2, "10.0.0.7", 29400, "torchrun")


def test_deepspeed_launcher_with_its_local_rank_argument():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "2"}
    assert DistEnv.from_environ(env, local_rank_arg=1) == DistEnv(1, 2, 1, 2, "127.0.0.1", 29500, "deepspeed")
    with pytest.raises(RuntimeError, match="--local_rank=0 disagrees with LOCAL_RANK=1"):
        DistEnv.from_environ(env, local_rank_arg=0)
    with pytest.raises(RuntimeError, match="RANK and WORLD_SIZE are not set"):
        DistEnv.from_environ({}, local_rank_arg=1)


def test_slurm_srun_one_task_per_process(monkeypatch):
    monkeypatch.setattr(rdist.shutil, "which", lambda name: None)  # no scontrol: the built-in parser
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
           "SLURM_STEP_TASKS_PER_NODE": "2(x4)", "SLURM_JOB_NODELIST": "gpu[003-006]", "SLURM_JOB_ID": "123456",
           "SLURM_NTASKS": "8"}
    assert DistEnv.from_environ(env) == DistEnv(5, 8, 1, 2, "gpu003", 23456, "slurm")
    # every task of a job derives the same rendezvous without talking to the others
    assert DistEnv.from_environ({**env, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}).master_port == 23456
    # exported MASTER_ADDR / MASTER_PORT win (e.g. set by the sbatch script)
    explicit = DistEnv.from_environ({**env, "MASTER_ADDR": "head", "MASTER_PORT": "31000"})
    assert (explicit.master_addr, explicit.master_port) == ("head", 31000)
    # uneven nodes: "3,2(x2)" = 3, 2, 2 tasks
    uneven = {**env, "SLURM_STEP_TASKS_PER_NODE": "3,2(x2)", "SLURM_STEP_NUM_TASKS": "7", "SLURM_NODEID": "0",
              "SLURM_PROCID": "2", "SLURM_LOCALID": "2"}
    assert DistEnv.from_environ(uneven).local_world_size == 3


def test_slurm_batch_shell_without_srun_is_one_process():
    # the batch script itself has job variables but no step: it must not wait for 8 peers
    env = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_PROCID": "0"}
    assert DistEnv.from_environ(env).world_size == 1


def test_torchrun_inside_slurm_reads_torchrun():
    env = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3",
           "TORCHELASTIC_RUN_ID": "j", "LOCAL_WORLD_SIZE": "4"}
    assert DistEnv.from_environ(env).launcher == "torchrun"


@pytest.mark.parametrize(
    "nodelist, first",
    [("n[1-2]", "n1"), ("node001,node002", "node001"), ("gpu[003-010,12],cpu1", "gpu003"),
     ("rack[1-2]-n[3-4]", "rack1-n3"), ("single", "single"), ("a[7,9-11]", "a7")],
)
def test_first_host_of_a_node_list(monkeypatch, nodelist, first):
    monkeypatch.setattr(rdist.shutil, "which", lambda name: None)
    assert first_slurm_host(nodelist) == first


def test_first_host_asks_scontrol_when_installed(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "hostA\\nhostB\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert first_slurm_host("whatever[1-2]") == "hostA"


def test_bad_values_are_named():
    with pytest.raises(RuntimeError, match="WORLD_SIZE='two' is not an integer"):
        DistEnv.from_environ({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="rank 4 is outside world size 4"):
        DistEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(RuntimeError, match="cannot parse SLURM tasks-per-node"):
        DistEnv.from_environ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2x"})


def test_export_round_trips():
    env = DistEnv(2, 4, 0, 2, "h", 1234, "slurm")
    exported: dict[str, str] = {}
    env.export(exported)
    assert DistEnv.from_environ(exported) == DistEnv(2, 4, 0, 2, "h", 1234, "env")


def test_single_process_init_without_any_launcher_does_not_try_mpi():
    clean = {k: v for k, v in os.environ.items()
             if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} and not k.startswith("SLURM_")}
    code = ("from recipe.dist import init_distributed, get_world_size, is_main; import torch.distributed as d;"
            "env = init_distributed(); print('RESULT', env.launcher, get_world_size(), is_main(), d.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT none 1 True gloo" in result.stdout
    assert "mpi" not in (result.stdout + result.stderr).lower()


def _helpers_on_ranks(rank: int, world_size: int) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rdist.print0(f"hello from {rank}")
    rdist.barrier()
    return {"printed": out.getvalue(), "is_main": rdist.is_main(), "rank": rdist.get_rank(),
            "world": rdist.get_world_size(), "env": DistEnv.from_environ()}


def test_print0_is_main_and_barrier_on_two_ranks():
    results = run_on_ranks(_helpers_on_ranks, world_size=2)
    assert [r["printed"] for r in results] == ["hello from 0\n", ""]
    assert [r["is_main"] for r in results] == [True, False]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    assert [r["env"].rank for r in results] == [0, 1] and results[0]["env"].launcher == "env"
def test_a_build_lock_left_by_an_interrupted_compile_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    for name, age in (("py311_cpu/deepspeed_shm_comm", 3600), ("fresh_build", 30)):
        (tmp_path / name).mkdir(parents=True)
        lock = tmp_path / name / "lock"
        lock.touch()
        os.utime(lock, (1_000_000 - age, 1_000_000 - age))
    assert rdist.stale_extension_locks(now=1_000_000) == [str(tmp_path / "py311_cpu/deepspeed_shm_comm/lock")]
    assert rdist.stale_extension_locks(max_age_s=10, now=1_000_000) == sorted(
        [str(tmp_path / "py311_cpu/deepspeed_shm_comm/lock"), str(tmp_path / "fresh_build/lock")])


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    # A stale lock hung CI for 600 s: DeepSpeed waits on a lock left by a killed build, forever.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "py311_cpu/deepspeed_shm_comm/lock", tmp_path / "fresh_build/lock"
    for lock, age in ((stale, 3600), (fresh, 30)):
        lock.parent.mkdir(parents=True)
        lock.touch()
        now = __import__("time").time()
        os.utime(lock, (now - age, now - age))
    assert rdist.remove_stale_extension_locks() == [str(stale)]
    assert not stale.exists() and fresh.exists()
