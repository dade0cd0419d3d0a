"""End-to-end tests of the SLURM launch path on the project's local cluster (slurm/local/start.sh).

A session-scoped fixture starts a cluster of 2 emulated nodes (n1, n2 on 127.0.0.1; needs root and
apt-get for slurmctld/slurmd/slurm-client) and stops it afterwards. The jobs go through the real
slurm/lib/launch.sh (srun -> one torchrun per node), the code slurm/pretrain.sh uses:
1. a 2-rank gloo all_reduce across the 2 nodes proves the rendezvous plumbing;
2. `scancel --signal=USR1 --batch` (what `--signal=B:USR1@120` does before the time limit) reaches
   the Python workers through the batch trap, they exit 3, the job is requeued and the second run
   (SLURM_RESTART_COUNT=1) finishes;
3. `sbatch slurm/pretrain.sh` trains on the cluster and leaves a checkpoint;
4. a pretraining job signalled mid-run checkpoints, requeues, resumes and ends with the losses of an
   uninterrupted run;
5. `sbatch --array=0-1 slurm/shard.sh` (task 0 signalled and requeued) then `slurm/shard_finalize.sh`
   with afterok write the shards and indexes of a one-process write, byte for byte; a failed task
   cancels the finalize job, and re-running that task alone (NUM_TASKS) then finalizing completes.
Without root, SLURM or apt-get the tests skip, except under CI=true, where that is a failure.
Jobs are polled with `scontrol show job` (`sbatch --wait` can report 30 s late).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import missing_prerequisite

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "local" / "start.sh"
STOP = REPO / "slurm" / "local" / "stop.sh"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _ports_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_port_block(count: int) -> int:
    """A block of `count` consecutive free ports, so that a cluster already running on the default
    ports (a developer's own) is left alone. Below 20000: job rendezvous ports live in [20000, 30000)."""
    for base in range(6817, 20000 - count, 10):
        if _ports_free(base, count):
            return base
    raise RuntimeError("no free block of ports for the local SLURM cluster")


class Cluster:
    """The running local cluster: submit jobs, read their state, wait for them."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=60, check=check)

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"sbatch failed: {out.stderr}"
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_for(self, job_id: str, condition, timeout: float, what: str, log: Path | None = None) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if condition(info):
                return info
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log and log.exists() else "(no log)"
                pytest.fail(f"job {job_id}: timed out after {timeout}s waiting for {what}; state {info}\n{tail}")
            time.sleep(0.5)

    def wait_final(self, job_id: str, timeout: float, log: Path | None = None) -> dict[str, str]:
        return self.wait_for(job_id, lambda i: i.get("JobState") in FINAL_STATES, timeout, "the end", log)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Outside CI, a machine that cannot run the cluster (not root, no SLURM and no apt-get, apt-get failing)
    skips these tests with the reason; under CI=true each of those is a failure (missing_prerequisite)."""
    if os.geteuid() != 0:
        missing_prerequisite("the local SLURM cluster needs root (it runs slurmctld/slurmd as root)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        missing_prerequisite("slurmctld is not installed and there is no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    port = _free_port_block(3)
    # the parent's SLURM_* variables (pytest run inside a job) would leak into our sbatch calls
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_LOCAL_DIR=str(state), SLURM_LOCAL_NODES="2", SLURM_LOCAL_CPUS="4", SLURM_LOCAL_CTLD_PORT=str(port),
               SLURM_LOCAL_SLURMD_PORT=str(port + 1), PYTHON=sys.executable)
    started = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        if not shutil.which("slurmctld"):
            missing_prerequisite(f"apt-get could not install SLURM: {started.stderr[-1500:]}")
        pytest.fail(f"slurm/local/start.sh failed:\n{started.stderr[-3000:]}")
    assert started.stdout.strip() == f"export SLURM_CONF={state}/etc/slurm.conf"
    env["SLURM_CONF"] = f"{state}/etc/slurm.conf"
    yield Cluster(env)
    subprocess.run(["bash", str(STOP)], env=env, capture_output=True, text=True, timeout=120)


def _job_script(body: str) -> str:
    """A batch script that runs `body` through the project's launch path from the repo root."""
    return "#!/bin/bash\nset -uo pipefail\nsource slurm/lib/launch.sh\n" + textwrap.dedent(body)


ALLREDUCE = """
import os, socket, sys, json
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
out = {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": value.item(),
       "node": os.environ["SLURMD_NODENAME"], "omp": os.environ.get("OMP_NUM_THREADS")}
open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w").write(json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.parametrize("per_node", [1, 2], ids=["cpu-1-per-node", "2-per-node-like-gpus"])
def test_allreduce_across_two_nodes(cluster, tmp_path, per_node):
    """CPU=1: one process per node. GPUS_PER_NODE=2: the multi-GPU layout (2 torchrun workers per node),
    here on CPU: global rank = node_rank * 2 + local rank."""
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    job_file = tmp_path / "job.sh"
    job_file.write_text(_job_script(f'launch_on_nodes {script} {tmp_path}\n'))
    log = tmp_path / "job.out"
    knobs = {"CPU": "1"} if per_node == 1 else {"GPUS_PER_NODE": str(per_node)}
    job_id = cluster.sbatch("--nodes=2", "--job-name=allreduce", f"--output={log}", str(job_file), env=knobs)
    info = cluster.wait_final(job_id, timeout=120, log=log)
    assert info["JobState"] == "COMPLETED", log.read_text()
    world = 2 * per_node
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert {r["world"] for r in results} == {world}
    assert {r["sum"] for r in results} == {world * (world + 1) / 2}   # 1 + 2 + ...: every rank took part
    # node_rank 0 = the first host = the master; ranks fill node n1 first
    assert [r["node"] for r in results] == ["n1"] * per_node + ["n2"] * per_node
    assert {r["omp"] for r in results} == {"1"}                       # one thread per process


SIGNALLED = """
import os, signal, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
rank, restart = os.environ["RANK"], os.environ.get("SLURM_RESTART_COUNT", "0")
received = []
signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
(out / f"started-{restart}-{rank}").write_text(os.environ["SLURMD_NODENAME"])
if restart != "0":                      # the requeued run: finish normally
    (out / f"done-{rank}").write_text(restart)
    sys.exit(0)
deadline = time.time() + 90
while not received and time.time() < deadline:
    time.sleep(0.1)
if received:
    (out / f"usr1-{rank}").write_text("checkpointed")
    sys.exit(3)                         # recipe/preemption.py's REQUEUE_EXIT_CODE
sys.exit(1)
"""


def test_usr1_reaches_workers_and_requeues(cluster, tmp_path):
    script = tmp_path / "signalled.py"
    script.write_text(SIGNALLED)
    job_file = tmp_path / "job.sh"
    job_file.write_text(_job_script(f'launch_on_nodes {script} {tmp_path}\nexit $?\n'))
    log = tmp_path / "job.out"
    job_id = cluster.sbatch("--nodes=2", "--job-name=signalled", "--requeue", "--open-mode=append",
                            f"--output={log}", str(job_file))
    started = [tmp_path / f"started-0-{r}" for r in (0, 1)]
    cluster.wait_for(job_id, lambda i: all(p.exists() for p in started), 120, "both ranks to start", log)

    # what `#SBATCH --signal=B:USR1@120` does before the time limit: signal only the batch shell
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)

    info = cluster.wait_for(job_id, lambda i: i.get("Restarts") == "1" and i.get("JobState") in FINAL_STATES,
                            150, "the requeued run to finish", log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text
    assert [(tmp_path / f"usr1-{r}").exists() for r in (0, 1)] == [True, True], text
    assert [(tmp_path / f"done-{r}").read_text() for r in (0, 1)] == ["1", "1"], text
    assert "got SIGUSR1" in text and "requeueing job" in text      # one log across both runs (append)


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune.sh", "shard.sh", "shard_finalize.sh", "export.sh"])
def test_sbatch_accepts_the_script(cluster, script):
    """SLURM itself validates the #SBATCH header (--test-only: nothing is submitted). This cluster has
    no GPUs and 2 CPUs per node, so those two requests are overridden on the command line."""
    result = cluster.run("sbatch", "--test-only", "--gpus-per-node=0", "--cpus-per-task=1", f"slurm/{script}",
                         check=False)
    assert result.returncode == 0 and "to start at" in result.stderr, result.stderr


def test_pipeline_submits_a_dependency_chain(cluster, tmp_path):
    env = {**cluster.env, "DATA": str(tmp_path), "RUNS": str(tmp_path / "runs"), "SBATCH_GPUS_PER_NODE": "0"}
    # a DOWN partition queues jobs without starting them: the chain is inspected, then cancelled
    cluster.run("scontrol", "update", "PartitionName=debug", "State=DOWN")
    job_ids = []
    try:
        result = subprocess.run(["bash", "slurm/pipeline.sh"], env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        job_ids = re.findall(r"job (\d+) ->", result.stdout)
        assert result.returncode == 0, result.stderr
        assert len(job_ids) == 4, result.stdout
        jobs = [cluster.job(job_id) for job_id in job_ids]
        assert [j["JobName"] for j in jobs] == ["scl-reference", "scl-pretrain", "scl-finetune", "scl-export"]
        assert all(j["JobState"] == "PENDING" for j in jobs)
        for previous, job in zip(job_ids, jobs[1:]):
            assert job["Dependency"].startswith(f"afterok:{previous}"), job["Dependency"]
    finally:
        if job_ids:
            cluster.run("scancel", *job_ids, check=False)
        cluster.run("scontrol", "update", "PartitionName=debug", "State=UP")


# ------------------------------------------------------------------------------ sharding as an array

def _frame_folder_manifest(folder: Path, samples: int) -> Path:
    """A manifest of PNG frame folders (the PHOENIX layout), small enough for seconds of writing."""
    import numpy as np
    from PIL import Image

    rows = ["split\tid\tvideo\ttext"]
    for i in range(samples):
        clip = folder / "frames" / f"v{i}"
        clip.mkdir(parents=True)
        for t in range(4):
            ramp = (np.arange(16)[None, :] * 8 + np.arange(16)[:, None] * 4 + t * 16 + i * 9) % 256
            Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], -1).astype(np.uint8)).save(clip / f"{t:04d}.png")
        rows.append(f"{'dev' if i % 4 == 3 else 'train'}\tv{i}\tframes/v{i}\tsentence {i % 3}")
    manifest = folder / "corpus.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


STALLED_PYTHON = """#!/bin/bash
# slurm/shard.sh's PYTHON: the first run of array task 0 stalls until the test signals it
if [ "$SLURM_ARRAY_TASK_ID" = 0 ] && [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then touch "$0.started"; sleep 120; fi
exec %s "$@"
"""


def test_shard_array_then_finalize_write_what_one_process_writes(cluster, tmp_path):
    """Task 0 is signalled (what --signal=B:USR1@60 does before the time limit) and requeued; the finalize
    job (afterok) waits for its second run, and the result is byte for byte a one-process write's."""
    manifest = _frame_folder_manifest(tmp_path, samples=8)
    out, single = tmp_path / "array", tmp_path / "single"
    python = tmp_path / "python.sh"
    python.write_text(STALLED_PYTHON % sys.executable)
    python.chmod(0o755)
    knobs = {"MANIFEST": str(manifest), "OUT": str(out), "VIDEO_FORMAT": "npy", "EXTRA_ARGS": "--samples-per-shard 2"}
    # this cluster has 4 CPUs per node: one writer per task
    array = cluster.sbatch("--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/shard-%a.out", "slurm/shard.sh",
                           env={**knobs, "PYTHON": str(python)})
    log = tmp_path / "finalize.out"
    final = cluster.sbatch(f"--dependency=afterok:{array}", f"--output={log}", "slurm/shard_finalize.sh", env=knobs)
    cluster.wait_for(array, lambda i: Path(f"{python}.started").exists(), 60, "task 0 to start", log)
    cluster.run("scancel", "--signal=USR1", "--batch", f"{array}_0")
    info = cluster.wait_final(final, timeout=120, log=log)
    task_logs = "\n".join(path.read_text() for path in sorted(tmp_path.glob("shard-*.out")))
    assert info["JobState"] == "COMPLETED", log.read_text() + task_logs
    assert cluster.job(f"{array}_0")["Restarts"] == "1" and "requeueing" in task_logs
    for index in (0, 1):                                 # each task wrote its 2 of the 4 shards, no index
        summary = re.search(r"^\{$.*^\}$", (tmp_path / f"shard-{index}.out").read_text(), re.M | re.S)
        task = json.loads(summary.group(0))
        assert (task["task_index"], task["num_tasks"], task["shards_written"]) == (index, 2, 2)

    subprocess.run([sys.executable, "-m", "sharded_data.write", "--manifest", str(manifest), "--out", str(single),
                    "--video-format", "npy", "--samples-per-shard", "2", "--workers", "1", "--no-progress"],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
               if p.is_file() and p.name != "tasks.json"}
    expected = {p.relative_to(single).as_posix(): p.read_bytes() for p in sorted(single.rglob("*")) if p.is_file()}
    assert sorted(written) == sorted(expected) and "index-train.json" in written
    assert written == expected


def test_shard_array_failed_task_cancels_finalize_and_a_rerun_of_it_completes(cluster, tmp_path):
    """The recovery the script's header describes: the finalize job of a failed array is cancelled
    (--kill-on-invalid-dep), the failed task is re-run alone with NUM_TASKS, and a new finalize completes."""
    manifest = _frame_folder_manifest(tmp_path, samples=8)
    frame = tmp_path / "frames" / "v4" / "0000.png"       # train shard 1 = plan position 1: task 1's
    good = frame.read_bytes()
    frame.write_bytes(b"not a png")
    out = tmp_path / "array"
    knobs = {"MANIFEST": str(manifest), "OUT": str(out), "VIDEO_FORMAT": "npy", "EXTRA_ARGS": "--samples-per-shard 2"}
    array = cluster.sbatch("--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/shard-%a.out", "slurm/shard.sh",
                           env=knobs)
    log = tmp_path / "finalize.out"
    final = cluster.sbatch(f"--dependency=afterok:{array}", f"--output={log}", "slurm/shard_finalize.sh", env=knobs)
    info = cluster.wait_final(final, timeout=120, log=tmp_path / "shard-1.out")
    assert info["JobState"] == "CANCELLED" and not log.exists(), info
    assert "v4" in (tmp_path / "shard-1.out").read_text()   # the failed task's log names the bad video
    assert not list(out.glob("index-*.json"))

    frame.write_bytes(good)
    rerun = cluster.sbatch("--array=1", "--cpus-per-task=1", f"--output={tmp_path}/rerun-%a.out", "slurm/shard.sh",
                           env={**knobs, "NUM_TASKS": "2"})
    final = cluster.sbatch(f"--dependency=afterok:{rerun}", f"--output={log}", "slurm/shard_finalize.sh", env=knobs)
    info = cluster.wait_final(final, timeout=120, log=log)
    assert info["JobState"] == "COMPLETED", log.read_text() + (tmp_path / "rerun-1.out").read_text()
    assert json.loads(re.search(r"^\{$.*^\}$", log.read_text(), re.M | re.S).group(0))["splits"]["train"]["samples"] == 6


# ----------------------------------------------------------------------------- real pretraining
PRETRAIN_STEPS = 12


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    # small shards: every rank of the 2-node job must get at least one (webdataset's empty_check)
    subprocess.run([sys.executable, "-m", "sharded_data.synth", "--out", str(out), "--preset", "tiny",
                    "--train", "32", "--dev", "8", "--test", "8", "--samples-per-shard", "8", "--no-progress"],
                   cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    return out


def _pretrain_env(data: Path, out: Path) -> dict[str, str]:
    return {"DATA": str(data), "OUT": str(out), "PRESET": "tiny", "MAX_STEPS": str(PRETRAIN_STEPS), "CPU": "1",
            "EXTRA_ARGS": "--micro-batch-size 4 --num-workers 0 --save-every 4 --log-every 1 --seed 0"}


def _losses(run: Path) -> dict[int, float]:
    """step -> training loss from RUN/metrics.jsonl (the last value wins: a resumed run may repeat a step)."""
    losses = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "step" in record and "loss" in record:
            losses[int(record["step"])] = float(record["loss"])
    return losses


def _steps_logged(run: Path) -> int:
    try:
        return len(_losses(run))
    except (FileNotFoundError, ValueError):     # not written yet, or a line half-written
        return 0


def _submit_pretrain(cluster: Cluster, log: Path, env: dict[str, str]) -> str:
    return cluster.sbatch("--nodes=2", "--gpus-per-node=0", "--time=30", f"--output={log}", "slurm/pretrain.sh",
                          env=env)


@pytest.fixture(scope="module")
def uninterrupted_run(cluster, synthetic_shards, tmp_path_factory):
    """`sbatch slurm/pretrain.sh` on 2 emulated nodes x 1 CPU rank, run to the end without a signal."""
    tmp = tmp_path_factory.mktemp("pretrain")
    run, log = tmp / "run", tmp / "pretrain.out"
    job_id = _submit_pretrain(cluster, log, _pretrain_env(synthetic_shards, run))
    info = cluster.wait_final(job_id, timeout=600, log=log)
    assert info["JobState"] == "COMPLETED", log.read_text()[-3000:]
    return run


def test_pretrain_script_trains_on_two_nodes(uninterrupted_run):
    losses = _losses(uninterrupted_run)
    assert sorted(losses) == list(range(1, PRETRAIN_STEPS + 1))        # --log-every 1: every step
    latest = (uninterrupted_run / "checkpoints" / "latest").read_text().strip()
    assert (uninterrupted_run / "checkpoints" / latest / "complete.json").is_file()


def test_pretrain_preempted_resumes_with_identical_losses(cluster, synthetic_shards, uninterrupted_run, tmp_path):
    run, log = tmp_path / "run", tmp_path / "pretrain.out"
    job_id = _submit_pretrain(cluster, log, _pretrain_env(synthetic_shards, run))
    cluster.wait_for(job_id, lambda i: _steps_logged(run) >= 3, 600, "3 training steps", log)
    # what `#SBATCH --signal=B:USR1@120` does before the time limit
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)
    info = cluster.wait_for(job_id, lambda i: i.get("Restarts") == "1" and i.get("JobState") in FINAL_STATES,
                            600, "the resumed run to finish", log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "requeueing job" in text
    expected, got = _losses(uninterrupted_run), _losses(run)
    assert max(got) == PRETRAIN_STEPS and sorted(got) == sorted(expected)
    assert got == expected  # exactly: one thread per rank, the same batches, the same checkpointed state
