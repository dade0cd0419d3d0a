"""The one place that reads the launcher's environment: rank, world size and rendezvous address.

Supported launchers (first match wins):
- ``torchrun``: RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT
  (recognised by TORCHELASTIC_RUN_ID);
- the ``deepspeed`` launcher: RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_SIZE / MASTER_ADDR / MASTER_PORT,
  plus ``--local_rank=N`` on the command line (recognised by CROSS_RANK / LOCAL_SIZE);
- any other launcher that exports RANK and WORLD_SIZE ("env");
- SLURM with one task per process under ``srun``: SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID;
  the master is the step's first host and the port is derived from the job id, so every task of a
  job agrees without talking to each other (MASTER_ADDR / MASTER_PORT, when exported, win);
- nothing: one process (world size 1).

`init_distributed` exports the resolved values as the standard variables before calling
`deepspeed.init_distributed`, because DeepSpeed falls back to MPI discovery (and fails without mpi4py)
when they are missing.

On GPUs it also settles three things a CPU run never meets:
- which GPU: the local rank's, or the only one the process sees (SLURM's `--gpus-per-task=1` shows each
  task one device, so `set_device(local_rank)` would fail on every task but the first); LOCAL_RANK is
  exported as that device index, because DeepSpeed picks its device from LOCAL_RANK (engine, ZeRO-3 Init);
- how long a collective may wait: `process_group_timeout()` (DeepSpeed's own default is 10 minutes);
- a CPU (gloo) group beside NCCL, `host_group()`, for the small exchanges that must not wait for the GPU
  (batch shapes, sample ids, the preemption flag): a collective on a CUDA tensor whose result the host
  reads stalls the CPU until the whole queue of GPU work before it has run.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, MutableMapping

import torch
import torch.distributed as dist

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
# Ports derived from a SLURM job id land in [20000, 30000): below Linux's ephemeral range
# (32768+), so a rendezvous port never collides with an outgoing connection's port.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000
# Rank-0-only work runs while the other ranks wait in a barrier: converting a large checkpoint to the
# universal format, writing a reference checkpoint of the training set, scoring dev. NCCL's and DeepSpeed's
# 10-minute default kills such a job; an hour still ends a real hang within the hour. DEEPSPEED_TIMEOUT
# (minutes, DeepSpeed's own variable) overrides it.
DEFAULT_TIMEOUT_MINUTES = 60


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank, 0..world_size-1."""
    world_size: int = 1
    """Number of processes in the job."""
    local_rank: int = 0
    """Rank among the processes of this node; picks the GPU."""
    local_world_size: int = 1
    """Number of processes on this node."""
    master_addr: str = DEFAULT_MASTER_ADDR
    """Host of rank 0, where the process group rendezvous."""
    master_port: int = DEFAULT_MASTER_PORT
    """TCP port of the rendezvous."""
    launcher: str = "none"
    """Which launcher set the environment: torchrun, deepspeed, env, slurm or none."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size} (launcher: {self.launcher})")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local rank {self.local_rank} is outside local world size {self.local_world_size} "
                f"(launcher: {self.launcher})"
            )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, local_rank_arg: int | None = None) -> "DistEnv":
        """Read the launcher's variables; `local_rank_arg` is the deepspeed launcher's ``--local_rank``."""
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return _from_rank_variables(env, local_rank_arg)
        if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
            return _from_slurm(env)
        # A bare --local_rank without RANK/WORLD_SIZE is a single-node launcher we do not know.
        if local_rank_arg not in (None, -1, 0):
            raise RuntimeError(
                f"--local_rank={local_rank_arg} was given but RANK and WORLD_SIZE are not set: launch with "
                "`deepspeed`, `torchrun` or `srun`, which export them"
            )
        return cls()

    def export(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Write the standard variables that torch.distributed and DeepSpeed read."""
        env = os.environ if environ is None else environ
        env["RANK"] = str(self.rank)
        env["WORLD_SIZE"] = str(self.world_size)
        env["LOCAL_RANK"] = str(self.local_rank)
        env["LOCAL_WORLD_SIZE"] = str(self.local_world_size)
        env["MASTER_ADDR"] = self.master_addr
        env["MASTER_PORT"] = str(self.master_port)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"environment variable {name} is required by the launcher but not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def _from_rank_variables(env: Mapping[str, str], local_rank_arg: int | None) -> DistEnv:
    if "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    elif "CROSS_RANK" in env or "LOCAL_SIZE" in env:
        launcher = "deepspeed"
    else:
        launcher = "env"
    world_size = _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK", default=local_rank_arg if local_rank_arg not in (None, -1) else 0)
    if local_rank_arg not in (None, -1) and local_rank_arg != local_rank:
        raise RuntimeError(f"--local_rank={local_rank_arg} disagrees with LOCAL_RANK={local_rank}")
    if "LOCAL_WORLD_SIZE" in env:
        local_world_size = _int(env, "LOCAL_WORLD_SIZE")
    elif "LOCAL_SIZE" in env:
        local_world_size = _int(env, "LOCAL_SIZE")
    else:
        local_world_size = world_size  # unknown: assume a single node, the common case for these launchers
    return DistEnv(
        rank=_int(env, "RANK"),
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        master_addr=env.get("MASTER_ADDR", DEFAULT_MASTER_ADDR),
        master_port=_int(env, "MASTER_PORT", DEFAULT_MASTER_PORT),
        launcher=launcher,
    )


def _from_slurm(env: Mapping[str, str]) -> DistEnv:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if "MASTER_ADDR" in env:
        master_addr = env["MASTER_ADDR"]
    elif nodelist:
        master_addr = first_slurm_host(nodelist)
    else:
        master_addr = DEFAULT_MASTER_ADDR
    if "MASTER_PORT" in env:
        master_port = _int(env, "MASTER_PORT")
    else:
        master_port = SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID", 0) % SLURM_PORT_SPAN
    tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node_id = _int(env, "SLURM_NODEID", 0)
    local_world_size = _tasks_on_node(tasks_per_node, node_id) if tasks_per_node else _int(env, "SLURM_STEP_NUM_TASKS")
    return DistEnv(
        rank=_int(env, "SLURM_PROCID"),
        world_size=_int(env, "SLURM_STEP_NUM_TASKS"),
        local_rank=_int(env, "SLURM_LOCALID", 0),
        local_world_size=local_world_size,
        master_addr=master_addr,
        master_port=master_port,
        launcher="slurm",
    )


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """SLURM's compressed per-node task counts, e.g. "4(x2),2" = 4, 4, 2; pick node `node_id`."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise RuntimeError(f"cannot parse SLURM tasks-per-node {tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if node_id >= len(counts):
        raise RuntimeError(f"SLURM_NODEID={node_id} but tasks-per-node {tasks_per_node!r} lists {len(counts)} nodes")
    return counts[node_id]


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list ("gpu[003-010,12],cpu1" -> "gpu003").

    Asks `scontrol show hostnames` when it is installed (it knows every syntax); otherwise expands the
    common forms by hand: comma-separated names, each with bracketed ranges kept zero-padded.
    """
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass  # fall through to the parser: a broken scontrol must not stop training
    first = _split_top_level(nodelist)[0]
    # Each bracket group contributes its first element: "n[1-2]-ib[3,4]" -> "n1-ib3".
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], first)


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for char in nodelist.strip():
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if not parts[0]:
        raise RuntimeError(f"empty SLURM node list {nodelist!r}")
    return parts


def free_port() -> int:
    """A TCP port that is free now (for single-process runs and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


STALE_LOCK_SECONDS = 600  # the CPU communication op builds in ~30 s; a lock this old outlived its build


def stale_extension_locks(max_age_s: float = STALE_LOCK_SECONDS, now: float | None = None) -> list[str]:
    """Build locks of torch JIT extensions (DeepSpeed's `deepspeed_shm_comm` on CPU) older than max_age_s.

    torch creates `<extension>/lock` while it compiles and removes it afterwards; a process killed during
    the build leaves it behind, and every later process waits on it forever without a word.
    """
    import glob
    import time

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    now = time.time() if now is None else now
    locks = glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock"))
    return sorted(path for path in locks if now - os.path.getmtime(path) > max_age_s)


def remove_stale_extension_locks(max_age_s: float = STALE_LOCK_SECONDS) -> list[str]:
    """Remove the build locks that `stale_extension_locks` finds; the next build then takes the lock afresh.

    Waiting is never the right answer for such a lock (the build that owned it is dead), and a run that hangs
    before its first step, silently, is the worst way to fail; a build older than max_age_s is ~20x the
    CPU op's build time.
    """
    removed = []
    for lock in stale_extension_locks(max_age_s):
        try:
            os.remove(lock)
            removed.append(lock)
        except FileNotFoundError:  # another process removed it first
            pass
    return removed


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The GPU this process uses, as an index into the devices it sees.

    One visible device: that one, whatever the local rank (SLURM `--gpus-per-task=1`, or a launcher that
    sets CUDA_VISIBLE_DEVICES per process). Several: the local rank's (torchrun, the deepspeed launcher,
    srun tasks that all see the node's GPUs). Fewer devices than the local rank needs is an error, not a
    silent doubling-up of two ranks on one GPU.
    """
    if device_count < 1:
        raise RuntimeError("CUDA is available but no device is visible (CUDA_VISIBLE_DEVICES?)")
    if device_count == 1:
        return 0
    if local_rank >= device_count:
        raise RuntimeError(
            f"local rank {local_rank} but this process sees only {device_count} GPUs: start one process per GPU "
            "(torchrun --nproc_per_node = GPUs per node, or srun --gpus-per-task=1), or expose more GPUs"
        )
    return local_rank


def cpu_accelerator_requested(environ: Mapping[str, str] | None = None) -> bool:
    """DS_ACCELERATOR=cpu: the user asked for DeepSpeed's CPU accelerator (bf16 on CPU is then allowed)."""
    env = os.environ if environ is None else environ
    return env.get("DS_ACCELERATOR") == "cpu"


def process_group_timeout(environ: Mapping[str, str] | None = None) -> timedelta:
    """How long any collective may wait: DEEPSPEED_TIMEOUT minutes, else DEFAULT_TIMEOUT_MINUTES."""
    env = os.environ if environ is None else environ
    minutes = _int(env, "DEEPSPEED_TIMEOUT", DEFAULT_TIMEOUT_MINUTES)
    if minutes < 1:
        raise RuntimeError(f"DEEPSPEED_TIMEOUT={minutes}: give the process-group timeout in minutes (>= 1)")
    return timedelta(minutes=minutes)


def init_distributed(env: DistEnv | None = None, backend: str | None = None) -> DistEnv:
    """Create the default process group through DeepSpeed (gloo on CPU, nccl on CUDA), and the host group.

    Safe at world size 1 without any launcher: it exports a loopback rendezvous on a free port so
    DeepSpeed does not try MPI. Keep the returned DistEnv: after the export, the environment reads as a
    generic "env" launcher. A second call does not re-create an existing process group.
    """
    import deepspeed  # heavy; only the entry points need it

    env = DistEnv.from_environ() if env is None else env
    if env.launcher == "none":
        env = DistEnv(master_port=free_port())  # a free port lets single-process runs coexist
    env.export()
    if torch.cuda.is_available():
        device = cuda_device_index(env.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(device)
        os.environ["LOCAL_RANK"] = str(device)  # what DeepSpeed reads to choose its device (module docstring)
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if env.local_rank == 0:
            for lock in remove_stale_extension_locks():
                print(f"warning: removed {lock}, older than {STALE_LOCK_SECONDS // 60} minutes: left by a build "
                      "that was interrupted, DeepSpeed would have waited on it forever", file=sys.stderr, flush=True)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=process_group_timeout())
    host_group()  # every rank, now: creating it later, inside one code path, could pair it with another collective
    return env


_host_group: dist.ProcessGroup | None = None


def host_group() -> dist.ProcessGroup | None:
    """A gloo group over every rank, for small exchanges of CPU tensors (None = no process group).

    The default group itself when it is gloo (CPU runs, the tests); otherwise created once, the first time
    any rank asks (a collective: `init_distributed` asks on every rank right after creating the default
    group). Its collectives never touch the GPU, so reading their result never waits for GPU work.
    """
    global _host_group
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if _host_group is None:
        _host_group = dist.new_group(backend="gloo", timeout=process_group_timeout())
    return _host_group


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on global rank 0 (and in a single process without a process group)."""
    return get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only; other ranks stay quiet."""
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if get_world_size() > 1:
        dist.barrier()


def broadcast_object(value, src: int = 0):
    """`value` as rank `src` holds it, returned on every rank (a no-op without a process group).

    For decisions the ranks must take together but could read differently: a file-system read on each rank
    (NFS attribute caching can show one rank a file another does not see yet) would split them, and the ones
    that decided otherwise then wait in a collective the others never enter."""
    if get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src, group=host_group())  # gloo: pickled bytes stay on the host
    return holder[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank the buffers of rank `src` (BatchNorm running statistics), as DDP does before each forward.

    DeepSpeed broadcasts buffers once, at `initialize`; after that each rank's BatchNorm layers average their
    own batches and the ranks drift apart. Training itself does not see it (train mode normalises with the
    batch's statistics), but anything that runs the network in eval mode on several ranks (evaluation,
    trajectory recording) would use different networks on different samples, and the checkpoint would hold
    rank 0's. Call on every rank before those (a collective; a no-op in one process).
    """
    if get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)


def shutdown_distributed(env: DistEnv) -> None:
    """Leave the job in step: every rank reaches the barrier before any tears its connections down.

    Without it, a rank that finishes first can close its gloo pairs while a slower one is still inside
    the last collective, which then aborts. A single process keeps its group (DeepSpeed caches groups,
    so a second run in the same process, as in the tests, needs it).
    """
    global _host_group
    if env.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()  # every group, the host group included
        _host_group = None
