"""Run a function on N local processes that form a real process group (gloo), for CPU tests.

    from tests.distributed import run_on_ranks

    def _worker(rank, world_size, scale):        # module level: it is pickled into the children
        return torch.full((1,), rank * scale)    # any picklable result

    results = run_on_ranks(_worker, world_size=2, args=(3,))   # [rank 0 result, rank 1 result]

Each child gets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT (a free port)
and OMP_NUM_THREADS=1 (two ranks on two shared cores otherwise oversubscribe), exactly what a launcher
sets, so code under test reads them through `recipe.dist` as in production. The children never see a GPU
(`CPU_ONLY_ENV`, set before they start): on a one-GPU machine two ranks would otherwise pick NCCL and
`set_device(1)`; the multi-rank tests compare against CPU references on gloo anyway. With
`init_process_group=True` (default) the helper creates the gloo group itself and destroys it afterwards;
pass False when the function under test must create it (e.g. `recipe.dist.init_distributed`).
A child's exception fails the call with a RuntimeError that holds every failed rank's traceback.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recipe.dist import free_port

CPU_ONLY_ENV = {"CUDA_VISIBLE_DEVICES": ""}
"""What multi-rank tests run under: torch sees no GPU, so recipe.dist picks gloo and DeepSpeed its CPU accelerator."""


@contextlib.contextmanager
def cpu_only_environment() -> Iterator[None]:
    """os.environ with CPU_ONLY_ENV for the block: processes started inside inherit it from their start."""
    saved = {name: os.environ.get(name) for name in CPU_ONLY_ENV}
    os.environ.update(CPU_ONLY_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _child(
    local_rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    args: Sequence[Any],
    result_dir: str,
    init_process_group: bool,
    extra_env: dict[str, str],
) -> None:
    os.environ.update(
        RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        **extra_env,
    )
    torch.set_num_threads(1)
    if init_process_group:
        dist.init_process_group("gloo", rank=local_rank, world_size=world_size)
    try:
        result = fn(local_rank, world_size, *args)
    except BaseException:
        # Kept for the parent: when one rank fails, its peers fail too ("connection closed") and spawn
        # may report a peer's error first; the parent shows every rank's traceback, root cause included.
        (Path(result_dir) / f"rank{local_rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        if init_process_group and dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, Path(result_dir) / f"rank{local_rank}.pt")


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    init_process_group: bool = True,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Call `fn(rank, world_size, *args)` on `world_size` spawned processes; return their results by rank."""
    with tempfile.TemporaryDirectory(prefix="run_on_ranks-") as result_dir:
        try:
            with cpu_only_environment():  # the children start with it: before torch or DeepSpeed look for CUDA
                mp.spawn(
                    _child,
                    args=(fn, world_size, free_port(), tuple(args), result_dir, init_process_group, dict(env or {})),
                    nprocs=world_size,
                    join=True,
                )
        except Exception as error:
            reports = [f"--- rank {path.stem[4:]} ---\n{path.read_text()}" for path in sorted(Path(result_dir).glob("*.error"))]
            raise RuntimeError(f"{fn.__name__} failed on {len(reports)} rank(s):\n" + "\n".join(reports)) from error
        return [torch.load(Path(result_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
