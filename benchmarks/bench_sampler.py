"""Cost of Pair Selection: curriculum sampler time per epoch, and scoring time / memory versus N.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampler.py --out benchmarks/results/sampler.md

Random pooled embeddings (E=256, K=3 reference checkpoints, PS score delta, log schedule at mid-run alpha).
Part 1, N=18,401 (CSL-Daily train) with global batch 32: one full epoch of the sampler per pool size, plus
the exact greedy (every remaining sample a candidate) estimated from a few batches, since its cost per
batch falls linearly with the remaining set: epoch ~= batches x cost at N/2 candidates.
Part 2, N = 7,096 (PHOENIX-2014T train), 18,401 and 100,000: memory of the stored trajectory and of the
scorer's float32 copy, scorer construction, a mask call (32 local x 256 global) and a score_block of a
256-sample global batch against all N, and sampler time per batch at pool 512. One thread throughout
(the training processes own the other cores). Runs in a few minutes on one core.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: the sampler runs beside training

import argparse
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recipe.curriculum import CurriculumSchedule  # noqa: E402
from recipe.pair_selection import CurriculumBatchSampler, PairScorer, PairSelectionMask, build_greedy_batch  # noqa: E402
from recipe.trajectory_store import Trajectory  # noqa: E402

E, K, BATCH = 256, 3, 32


def random_trajectory(n: int, seed: int = 0) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    video = torch.empty((K, n, E), dtype=torch.float16)
    text = torch.empty((K, n, E), dtype=torch.float16)
    for t in range(K):  # one checkpoint at a time keeps the float32 transient small at N = 100k
        video[t] = torch.nn.functional.normalize(torch.randn(n, E, generator=g), dim=-1).half()
        text[t] = torch.nn.functional.normalize(torch.randn(n, E, generator=g), dim=-1).half()
    sentences = torch.arange(n) // 3  # CSL-Daily-like: sentences signed by several signers
    return Trajectory([0, 5, 10], torch.arange(n), sentences, video, text, [Path("bench/trajectories/ref-0000.safetensors")])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def timed_cpu(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier number."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def sampler_epochs(scorer: PairScorer, pools: list[int]) -> list[str]:
    rows = ["| pool size | batches | wall s / epoch | CPU s / epoch | CPU ms / batch |", "|---|---:|---:|---:|---:|"]
    for pool in pools:
        sampler = CurriculumBatchSampler(scorer, BATCH, CurriculumSchedule("log"), num_epochs=10, seed=0, pool_size=pool)
        wall, cpu = timed_cpu(lambda: sampler.epoch_batches(5))
        rows.append(f"| {pool} | {len(sampler)} | {wall:.2f} | {cpu:.2f} | {1000 * cpu / len(sampler):.2f} |")
        print(rows[-1], flush=True)
    # Exact greedy: cost per batch is linear in the candidates; time it at N/2 candidates.
    rng = np.random.default_rng(0)
    half = np.sort(rng.choice(scorer.num_samples, scorer.num_samples // 2, replace=False))
    wall, cpu = timed_cpu(lambda: [build_greedy_batch(scorer, int(half[0]), half[1:], BATCH, 0.5) for _ in range(3)])
    batches = scorer.num_samples // BATCH
    rows.append(
        f"| all remaining (exact; estimated) | {batches} | {wall / 3 * batches:.1f} | {cpu / 3 * batches:.1f} "
        f"| {1000 * cpu / 3:.1f} |"
    )
    print(rows[-1], flush=True)
    return rows


def scoring_scale(sizes: list[int]) -> list[str]:
    rows = [
        "| N | trajectory fp16 (MiB) | scorer float32 copy (MiB) | build scorer (s) | mask 32x256 (ms) "
        "| score_block 256xN (ms) | sampler ms / batch, pool 512 | peak RSS so far (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        traj = random_trajectory(n)
        traj_mib = (traj.video.nbytes + traj.text.nbytes) / 2**20
        start = time.perf_counter()
        scorer = PairScorer(traj)
        build = time.perf_counter() - start
        copy_mib = scorer._pooled.nbytes / 2**20
        rng = np.random.default_rng(1)
        global_ids = torch.from_numpy(rng.choice(n, 256, replace=False))
        mask = PairSelectionMask(scorer, CurriculumSchedule("log"), num_epochs=10)
        mask.set_epoch(5)
        mask_ms = 1000 * timed(lambda: mask(global_ids[:32], global_ids), repeat=5)
        block_ms = 1000 * timed(lambda: scorer.score_block(global_ids, scorer.sample_ids))
        candidates = np.sort(rng.choice(n, 513, replace=False))
        batch_ms = 1000 * timed(lambda: build_greedy_batch(scorer, int(candidates[0]), candidates[1:], BATCH, 0.5), repeat=10)
        rows.append(
            f"| {n} | {traj_mib:.0f} | {copy_mib:.0f} | {build:.2f} | {mask_ms:.1f} | {block_ms:.0f} | {batch_ms:.2f} "
            f"| {peak_rss_mib():.0f} |"
        )
        print(rows[-1], flush=True)
        del traj, scorer, mask
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--pools", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7096, 18401, 100000])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print("## Sampler, N = 18401, global batch 32", flush=True)
    epoch_rows = sampler_epochs(PairScorer(random_trajectory(18401)), args.pools)
    print("## Scoring versus N", flush=True)
    scale_rows = scoring_scale(args.sizes)
    if args.out:
        command = "OPENBLAS_NUM_THREADS=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
        load = os.getloadavg()
        lines = [
            "# Pair Selection sampler and scoring cost",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread used; "
            f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine: timings are "
            f"upper bounds). torch {torch.__version__}, numpy {np.__version__}.",
            "",
            f"Random pooled embeddings, E={E}, K={K} reference checkpoints, PS score delta, log schedule at epoch 5 of 10.",
            "",
            "## Sampler time per epoch (N = 18,401, global batch 32)",
            "",
            *epoch_rows,
            "",
            "## Scoring memory and time versus N",
            "",
            *scale_rows,
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
