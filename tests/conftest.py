"""Shared fixtures for the end-to-end tests of the training entry points (pretrain, finetune, export).

Everything expensive is made once per session and reused read-only:

* `shards`: one tiny synthetic shard directory (16x16 frames, 32 train / 7 dev / 7 test samples);
* `reference_run`: a finished one-process pretraining run with reference trajectories (random negatives);
* `translating_run`: a one-process pretraining run trained long enough to translate: its output is text, and
  which text (and how long) depends on the clip; the evaluation and export tests start from it;
* `zero_runs`: the same two-rank pretraining run under ZeRO-1, ZeRO-2 and ZeRO-3 (real launcher processes).

A test that changes a run copies it first (`copy_run`). Helpers build the command lines so that every test
trains the same tiny network the same way, and `launch` starts the two-rank runs exactly as a user would
(the `deepspeed` launcher, gloo, OMP_NUM_THREADS=1).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.distributed import CPU_ONLY_ENV

# The suite runs on the CPU, also on a GPU machine: its references (exact resume, 2 ranks = 1 process) are
# CPU numbers, and on a one-GPU machine the 2-rank runs would pick NCCL and set_device(1). Set before anything
# initialises CUDA. The GPU path is exercised by benchmarks/gpu_check.sh.
os.environ.update(CPU_ONLY_ENV)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DS_CONFIGS = REPO / "ds_configs"

# The smallest network and clips that still train: frames 16x16, at most 16 of them, 4 samples per rank.
FRAME_SIZE = 16
MAX_FRAMES = 16
MICRO_BATCH = 4
VOCAB_SIZE = 64
# 2 ranks x 4 samples = 8 per step, 32 training samples: 4 steps per epoch.
TWO_RANK_STEPS = 12
LAUNCH_TIMEOUT_S = 300

# Variables an in-process `main()` exports (recipe.dist.init_distributed) that must not leak into a launcher.
_RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
                    "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE", "TORCHELASTIC_RUN_ID", "GROUP_RANK")


def missing_prerequisite(reason: str) -> None:
    """Skip a test whose prerequisite is missing here, except under CI (CI=true, as `.ci/run` sets): there the
    project's own files are supposed to install it (slurm/local/start.sh apt-gets SLURM as root), so its
    absence is a failure to see, not a skip to scroll past."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def train_args(data: Path, out: Path, *extra: str, ds_config: str = "zero2.json",
               micro_batch: int = MICRO_BATCH) -> list[str]:
    """Flags shared by pretraining and finetuning runs of the tests: tiny network, short clips, fast steps."""
    return ["--data", str(data), "--out", str(out), "--deepspeed_config", str(DS_CONFIGS / ds_config),
            "--micro-batch-size", str(micro_batch), "--frame-size", str(FRAME_SIZE), "--max-frames", str(MAX_FRAMES),
            "--vocab-size", str(VOCAB_SIZE), "--num-workers", "0", "--lr", "1e-3", "--warmup-steps", "2",
            "--log-every", "1", "--eval-every", "0", *extra]


def reference_args(data: Path, out: Path) -> list[str]:
    """The session's reference run: 16 samples per step, 4 epochs of 2 steps, trajectories after every epoch
    (4 reference checkpoints: Pair Selection needs at least 3), checkpoints at steps 3 (mid-epoch), 6 and 8,
    all kept."""
    return train_args(data, out, "--epochs", "4", "--record-trajectory-every", "1", "--save-every", "3",
                      "--keep-last", "5", micro_batch=16)


def launch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", **CPU_ONLY_ENV)
    return env


def launcher_command(script: str, args: list[str], nproc: int = 2, launcher: str = "deepspeed") -> list[str]:
    """`deepspeed --num_gpus N recipe/SCRIPT.py ...` (or torchrun) on a free rendezvous port (CPU: gloo)."""
    from recipe.dist import free_port

    target = [str(REPO / "recipe" / script), *args]
    if launcher == "torchrun":
        return [TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), *target]
    return [DEEPSPEED, "--num_gpus", str(nproc), "--master_port", str(free_port()), *target]


def launch(script: str, args: list[str], nproc: int = 2, expect: int = 0,
           launcher: str = "deepspeed") -> subprocess.CompletedProcess:
    """Run an entry point on `nproc` ranks with a launcher; fail with its output if the exit code differs."""
    done = subprocess.run(launcher_command(script, args, nproc, launcher), cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if done.returncode != expect:
        raise AssertionError(f"{script} exited with {done.returncode} (expected {expect})\n--- stdout ---\n"
                             f"{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}")
    return done


def read_metrics(run: Path) -> dict[int, dict]:
    """RUN/metrics.jsonl as {step: the last training record of that step} (a resumed run may repeat steps)."""
    records: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "step" in record:
            records[record["step"]] = record
    return records


def losses(run: Path) -> list[float]:
    metrics = read_metrics(run)
    return [metrics[step]["loss"] for step in sorted(metrics)]


def run_main(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Call an entry point's `main(argv)` in this process, then remove the launcher variables it exported
    (RANK, MASTER_PORT, ...), which later tests, ours or others', did not set.

    The world-size-1 process group it created stays: DeepSpeed caches its groups for the life of the
    process, so a destroyed and re-created group breaks the next `deepspeed.initialize`.
    """
    environ = dict(os.environ)
    try:
        return main(argv)
    finally:
        os.environ.clear()
        os.environ.update(environ)


def trained_model(run: Path, tag: str, attn_implementation: str | None = None):
    """RUN's network with the fp32 weights of checkpoint TAG, read with DeepSpeed's own zero_to_fp32 (any ZeRO
    stage; a pretraining run's `model.` prefix dropped) and no recipe code in between; in eval mode, with the
    attention the run's model_config gives (what a finetuning `--init` builds) unless one is named."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from recipe.modeling import SignTranslationConfig, SignTranslationModel

    state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag)
    model = SignTranslationModel(SignTranslationConfig.from_pretrained(run / "model_config"))
    model.load_state_dict({key.removeprefix("model."): value for key, value in state.items()}, strict=True)
    if attn_implementation:
        model.set_attn_implementation(attn_implementation)
    return model.eval()


def generate_and_decode(model, tokenizer, shards: Path, split: str, batch_size: int, rank: int = 0,
                        world_size: int = 1, **generate_args) -> list[dict]:
    """What an evaluation should write, computed the plain way: `tokenizer.decode(model.generate(...))` on the
    batches the evaluation loader gives rank RANK of WORLD_SIZE. One dict per real sample: sample_id,
    hypothesis, its batch's number on that rank and `steps`, the generated length of that batch (how long
    the rank kept decoding)."""
    import torch

    from sharded_data.reader import ReaderConfig, make_eval_loader

    reader = ReaderConfig(frame_size=FRAME_SIZE, max_frames=MAX_FRAMES, num_workers=0)
    rows = []
    with torch.no_grad():
        for number, batch in enumerate(make_eval_loader(str(shards), split, batch_size, rank, world_size, reader)):
            generated = model.generate(frames=batch["frames"], frame_mask=batch["frame_mask"], **generate_args)
            for sample_id, ids, valid in zip(batch["sample_ids"].tolist(), generated, batch["valid"].tolist()):
                if valid:
                    rows.append({"sample_id": sample_id, "batch": number, "steps": generated.shape[1],
                                 "hypothesis": tokenizer.decode(ids, skip_special_tokens=True).strip()})
    return rows


def copy_run(run: Path, destination: Path) -> Path:
    shutil.copytree(run, destination, symlinks=True)
    return destination


@pytest.fixture(scope="session")
def one_thread():
    """In-process runs on one intra-op thread: CPU kernels are then bitwise reproducible (as under
    OMP_NUM_THREADS=1 in the launched runs), so exact-equality checks between runs are meaningful."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shards"
    subprocess.run([PYTHON, "-m", "sharded_data.synth", "--out", str(out), "--preset", "tiny", "--train", "32",
                    "--dev", "7", "--test", "7", "--frame-size", f"{FRAME_SIZE}x{FRAME_SIZE}", "--samples-per-shard",
                    "8", "--num-workers", "1", "--no-progress"], cwd=REPO, check=True, capture_output=True,
                   env=launch_env(), timeout=120)
    return out


@pytest.fixture(scope="session")
def reference_run(shards, tmp_path_factory, one_thread) -> Path:
    """One process, 4 epochs (8 steps) of random negatives, trajectories recorded after every epoch,
    checkpoints at steps 3, 6 and 8 (in-process `main`)."""
    from recipe import pretrain

    out = tmp_path_factory.mktemp("runs") / "reference"
    run_main(pretrain.main, reference_args(shards, out))
    return out


# The joint translation loss of a pretraining run, 320 steps at lr 3e-3 on the 32 clips (80 epochs), is what it
# takes for the tiny network to look at the video: before that it writes one memorised sentence (or nothing)
# whatever the clip, and a test of evaluation or export can then pass on empty or constant output. Measured on
# three corpora (different grammar draws), beam 2: 2-5 distinct translations of the 7 dev (and of the 7 test)
# clips, of 4-7 words, none empty; after 160 steps one corpus still gave a single greedy translation for all.
TRANSLATING_STEPS = 320
TRANSLATING_LR = "3e-3"


@pytest.fixture(scope="session")
def translating_run(shards, tmp_path_factory, one_thread) -> Path:
    """One process, random negatives plus the joint translation loss, TRANSLATING_STEPS steps of 8 samples,
    one checkpoint at the end (in-process `main`)."""
    from recipe import pretrain

    out = tmp_path_factory.mktemp("runs") / "translating"
    run_main(pretrain.main, train_args(shards, out, "--max-steps", str(TRANSLATING_STEPS), "--lr", TRANSLATING_LR,
                                       micro_batch=8))
    return out


@pytest.fixture(scope="session")
def zero_runs(shards, tmp_path_factory) -> dict[int, Path]:
    """The same two-rank pretraining run (random negatives) under ZeRO stages 1, 2 and 3."""
    root = tmp_path_factory.mktemp("zero")
    runs = {}
    for stage in (1, 2, 3):
        runs[stage] = root / f"zero{stage}"
        launch("pretrain.py", train_args(shards, runs[stage], "--max-steps", str(TWO_RANK_STEPS), "--save-every", "4",
                                         "--keep-last", "5", ds_config=f"zero{stage}.json"),
               launcher="deepspeed" if stage == 2 else "torchrun")  # both launchers, same numbers
    return runs
