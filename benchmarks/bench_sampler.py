"""Pair Selection's sampler: twins per batch, planning cost and its share of a GPU epoch, token-level score cost.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampler.py --reference runs/demo/reference \
        --out benchmarks/results/sampler.md

One thread throughout (the training processes own the other cores). Parts:

1. Twins: same-sentence pairs per global batch (16), random batches against PS batches at alpha 0, 0.5 and 1
   (exact greedy and a pool of 256), averaged over 4 planned epochs: on synthetic trajectories with CSL-like
   twins (2-6 signers per sentence; twins either independent or alike: identical text, videos sharing the
   sentence's direction) and, with --reference, on a real reference run (its token-level scores). Rules: the
   current one (`--same-sentence mask`: twin entries drawn from the member's column), the former one (twin
   entries counted as 0), and the paper's plain InfoNCE (`negative`: twins scored like any pair).
2. Sampler time per epoch at N = 18,401 (CSL-Daily train), global batch 32: pooled vectors (pools 256 / 512 /
   1024, and the exact greedy estimated from a few batches) and the token-level path (rows of a cached
   float16 N x N score matrix read through a memory map).
3. Planning ahead: a simulated epoch loop at N = 18,401 whose steps take the time a GPU epoch of the `large`
   preset would take (part 4), with the next epoch planned in the background (`recipe.batch_planning`):
   how long rank 0 waits for each epoch's plan, as a share of the epoch.
4. A `large` training step's FLOPs, counted (torch's FlopCounterMode) on CPU at 8 and 16 frames of 224 px and
   extrapolated linearly to PHOENIX's mean 117 frames; the GPU epoch time at 40% of an H200's bf16 peak.
5. Token-level scores (`recipe.token_scores`): CPU throughput measured on a block of pairs at the tiny and
   large shapes, extrapolated to every pair at N = 18,401 and 100,000; GPU time by arithmetic.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: the sampler runs beside training

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recipe.batch_planning import EpochPlanner  # noqa: E402
from recipe.curriculum import CurriculumSchedule  # noqa: E402
from recipe.pair_selection import (CurriculumBatchSampler, PairScorer, RandomBatchSampler,  # noqa: E402
                                   build_greedy_batch, same_sentence_pairs)
from recipe.token_scores import SymmetricScores, score_rows  # noqa: E402
from recipe.trajectory_store import Trajectory, load_trajectory  # noqa: E402

E, K, BATCH, N_CSL = 256, 3, 32, 18401
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s (spec); ENVIRONMENT.md measured ~790e12 in a matmul
H200_FP32_PEAK = 67e12  # fp32 FLOP/s without tensor cores (spec)
H200_TF32_PEAK = 495e12  # dense tf32 FLOP/s (spec)
UTILISATION = 0.4
PATH = Path("bench/trajectories/ref-0001.safetensors")


def timed_cpu(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier number."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def normalised(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1).half()


# --- 1. twins ---------------------------------------------------------------------------------------------
def csl_like_sentences(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, 7)))
    sizes[-1] -= sum(sizes) - n
    return np.repeat(np.arange(len(sizes)), sizes)[:n]


def twin_trajectory(n: int, alike: bool, e: int = 16, seed: int = 0) -> Trajectory:
    """Independent embeddings, or alike twins: one text vector per sentence (identical text), videos that move
    towards their sentence's direction over the checkpoints, plus a signer offset."""
    sentences = csl_like_sentences(n, seed)
    g = torch.Generator().manual_seed(seed)
    if not alike:
        video, text = torch.randn(K, n, e, generator=g), torch.randn(K, n, e, generator=g)
    else:
        direction = torch.nn.functional.normalize(torch.randn(sentences.max() + 1, e, generator=g), dim=-1)
        signer = 0.5 * torch.randn(n, e, generator=g)
        text = torch.stack([(direction + 0.3 * torch.randn(direction.shape, generator=g))[sentences] for _ in range(K)])
        video = torch.stack([a * direction[sentences] + signer + 0.2 * torch.randn(n, e, generator=g)
                             for a in np.linspace(0.2, 1.0, K)])
    return Trajectory(list(range(1, K + 1)), torch.arange(n), torch.as_tensor(sentences), normalised(video),
                      normalised(text), [PATH])


def zero_fill(scorer: PairScorer) -> PairScorer:
    """The former rule: a twin's entry counts 0 in the candidate's sum (a plain sum with those entries zeroed)."""
    inner = scorer.batch_contributions
    sentences = scorer.sentence_ids.numpy()

    def contributions(positions):
        column, own = inner(positions), sentences[np.asarray(positions)]
        return lambda j: np.where(own == own[j], np.float32(0.0), column(j)).astype(np.float32)

    scorer.batch_contributions = contributions
    scorer.twins_are_negatives = True  # no imputation: the zeroed entries stay 0
    return scorer


def twin_rows(name: str, make_scorer, trajectory: Trajectory, batch: int = 16, epochs: int = 4) -> list[str]:
    ids, sentences = trajectory.sample_ids.numpy(), trajectory.sentence_ids.numpy()
    counts = np.bincount(np.unique(sentences, return_inverse=True)[1])
    expected = batch * (batch - 1) / 2 * (counts * (counts - 1)).sum() / (len(ids) * (len(ids) - 1))
    random = RandomBatchSampler(ids, batch, seed=0)
    measured = same_sentence_pairs([b for e in range(epochs * 4) for b in random.epoch_batches(e)], ids, sentences)
    rows = [f"| {name} | random batches | - | {measured:.2f} (expected {expected:.2f}) | | |"]
    for rule, same_sentence in (("mask: drawn entries (now)", "mask"), ("mask: entries 0 (before)", "zero"),
                                ("negative (the paper)", "negative")):
        scorer = make_scorer("negative" if same_sentence == "zero" else same_sentence)
        scorer = zero_fill(scorer) if same_sentence == "zero" else scorer
        for pool in (None, 256):
            cells = []
            for alpha in (0.0, 0.5, 1.0):
                batches = []
                for seed in range(epochs):
                    sampler = CurriculumBatchSampler(scorer, batch, CurriculumSchedule("easy", alpha_start=alpha), 1,
                                                     seed=seed, pool_size=pool)
                    batches += sampler.epoch_batches(0)
                cells.append(f"{same_sentence_pairs(batches, ids, sentences):.2f}")
            rows.append(f"| {name} | {rule} | {pool or 'exact'} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    return rows


def twins(reference: Path | None) -> list[str]:
    rows = ["| trajectories | rule | pool | alpha 0 | alpha 0.5 | alpha 1 |", "|---|---|---|---:|---:|---:|"]
    for alike in (False, True):
        trajectory = twin_trajectory(1000, alike)
        rows += twin_rows(f"synthetic, {'alike' if alike else 'independent'} twins",
                          lambda mode, t=trajectory: PairScorer(t, "delta", same_sentence=mode), trajectory)
    if reference is not None:
        trajectory = load_trajectory(reference, load_tokens=False)
        kind = "token" if trajectory.has_tokens else "mean"
        started = time.process_time()
        shared = PairScorer(trajectory, "delta", kind).symmetric_scores() if kind == "token" else None
        print(f"token scores of {reference}: {time.process_time() - started:.1f} CPU s", flush=True)
        rows += twin_rows(f"{reference.name} ({trajectory.num_samples} clips, {trajectory.num_checkpoints} "
                          f"checkpoints, {kind})",
                          lambda mode: PairScorer(trajectory, "delta", kind, same_sentence=mode,
                                                  symmetric_scores=shared), trajectory)
    return rows


# --- 2. sampler time per epoch ----------------------------------------------------------------------------
def random_trajectory(n: int, seed: int = 0) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    video = torch.stack([normalised(torch.randn(n, E, generator=g)) for _ in range(K)])
    text = torch.stack([normalised(torch.randn(n, E, generator=g)) for _ in range(K)])
    return Trajectory([1, 5, 10], torch.arange(n), torch.arange(n) // 3, video, text, [PATH])


def random_score_matrix(n: int, folder: Path) -> SymmetricScores:
    """A float16 N x N matrix on disk, read back through a memory map (as the token-level cache is)."""
    path = folder / "rows-00000000.npy"
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, n))
    rng = np.random.default_rng(0)
    for start in range(0, n, 1024):
        matrix[start : start + 1024] = rng.standard_normal((min(1024, n - start), n), dtype=np.float32)
    matrix.flush()
    del matrix
    return SymmetricScores.from_array(np.load(path, mmap_mode="r"))


def sampler_epochs(pools: list[int], folder: Path) -> tuple[list[str], float]:
    rows = ["| scores | pool size | batches | wall s / epoch | CPU s / epoch | CPU ms / batch |",
            "|---|---|---:|---:|---:|---:|"]
    pooled = PairScorer(random_trajectory(N_CSL))
    pool_512_cpu = 0.0
    for pool in pools:
        sampler = CurriculumBatchSampler(pooled, BATCH, CurriculumSchedule("log"), num_epochs=10, seed=0, pool_size=pool)
        wall, cpu = timed_cpu(lambda: sampler.epoch_batches(5))
        pool_512_cpu = cpu if pool == 512 else pool_512_cpu
        rows.append(f"| pooled vectors | {pool} | {len(sampler)} | {wall:.2f} | {cpu:.2f} | {1000 * cpu / len(sampler):.2f} |")
        print(rows[-1], flush=True)
    rng = np.random.default_rng(0)
    half = np.sort(rng.choice(N_CSL, N_CSL // 2, replace=False))  # the exact greedy's mean candidate count
    wall, cpu = timed_cpu(lambda: [build_greedy_batch(pooled, int(half[0]), half[1:], BATCH, 0.5) for _ in range(3)])
    batches = N_CSL // BATCH
    rows.append(f"| pooled vectors | all remaining (exact; estimated) | {batches} | {wall / 3 * batches:.1f} "
                f"| {cpu / 3 * batches:.1f} | {1000 * cpu / 3:.1f} |")
    print(rows[-1], flush=True)
    cached = random_score_matrix(N_CSL, folder)
    ids = torch.arange(N_CSL)
    placeholder = torch.zeros((K, N_CSL, 1), dtype=torch.float16)  # the token path reads only the score matrix
    token = PairScorer(Trajectory([1, 5, 10], ids, ids // 3, placeholder, placeholder, [PATH], tokens_on_disk=True),
                       "delta", "token", symmetric_scores=cached)
    sampler = CurriculumBatchSampler(token, BATCH, CurriculumSchedule("log"), num_epochs=10, seed=0, pool_size=512)
    wall, cpu = timed_cpu(lambda: sampler.epoch_batches(5))
    rows.append(f"| token (cached float16 matrix, memory map) | 512 | {len(sampler)} | {wall:.2f} | {cpu:.2f} "
                f"| {1000 * cpu / len(sampler):.2f} |")
    print(rows[-1], flush=True)
    return rows, pool_512_cpu


# --- 3. planning ahead --------------------------------------------------------------------------------------
def planning_ahead(gpu_epoch_s: float, epochs: int = 4) -> list[str]:
    scorer = PairScorer(random_trajectory(N_CSL))
    sampler = CurriculumBatchSampler(scorer, BATCH, CurriculumSchedule("log"), num_epochs=epochs, seed=0, pool_size=512)
    planner = EpochPlanner(sampler.epoch_batches, len(sampler), epochs)
    step_s = gpu_epoch_s / len(sampler)
    rows = ["| epoch | planned | rank 0 waited (s) | epoch time (s) | share |", "|---:|---|---:|---:|---:|"]
    for epoch in range(epochs):
        started = time.perf_counter()
        plan = planner.epoch_batches(epoch)
        for _ in plan:  # the GPU's work: the process waits on the device, the planner thread gets a core
            time.sleep(step_s)
        took = time.perf_counter() - started
        rows.append(f"| {epoch} | {'on the spot (first epoch)' if epoch == 0 else 'in the background'} "
                    f"| {planner.last_wait_s:.3f} | {took:.2f} | {100 * planner.last_wait_s / took:.2f}% |")
        print(rows[-1], flush=True)
    planner.close()
    return rows


# --- 4. GPU epoch time from counted FLOPs -----------------------------------------------------------------
def large_step_flops(frame_counts=(8, 16), text_tokens: int = 30) -> tuple[float, float]:
    """(fixed, per-frame) FLOPs of one video's training step (forward + backward, both losses) of `large`."""
    from torch.utils.flop_counter import FlopCounterMode

    from recipe.modeling import SignTranslationModel
    from recipe.presets import build_config

    model = SignTranslationModel(build_config("large", vocab_size=3000, attn_implementation="sdpa",
                                              max_visual_tokens=64, max_position_embeddings=64))
    counted = []
    for frames in frame_counts:
        video = torch.zeros(1, frames, 3, 224, 224)
        ids = torch.randint(3, 100, (1, text_tokens))
        with FlopCounterMode(display=False) as counter:
            visual = model.sign_encoder(video, torch.ones(1, frames, dtype=torch.bool))
            features = model.contrastive_features(video, None, ids, torch.ones_like(ids, dtype=torch.bool), visual=visual)
            loss = model(encoder_outputs=visual, labels=ids).loss + features.video.sum() + features.text.sum()
            loss.backward()
        model.zero_grad(set_to_none=True)
        counted.append(counter.get_total_flops())
    per_frame = (counted[1] - counted[0]) / (frame_counts[1] - frame_counts[0])
    return counted[0] - per_frame * frame_counts[0], per_frame


# --- 5. token-level score cost ---------------------------------------------------------------------------
def token_shapes_cost(shapes: dict[str, tuple[int, int, int]], rows: int = 32, cols: int = 256) -> dict[str, float]:
    """CPU seconds per (pair, direction, checkpoint) of score_rows at each (Lv, Lt, E)."""
    out = {}
    for name, (lv, lt, e) in shapes.items():
        g = torch.Generator().manual_seed(0)
        n = cols
        tokens = lambda length: normalised(torch.randn(1, n, length, e, generator=g))  # noqa: E731
        trajectory = Trajectory([1], torch.arange(n), torch.arange(n), normalised(torch.randn(1, n, e, generator=g)),
                                normalised(torch.randn(1, n, e, generator=g)), [PATH],
                                video_tokens=tokens(lv), video_mask=torch.ones(1, n, lv, dtype=torch.bool),
                                text_tokens=tokens(lt), text_mask=torch.ones(1, n, lt, dtype=torch.bool))
        _, cpu = timed_cpu(lambda: score_rows(trajectory, torch.ones(1), [0], 0, rows, "token", "cpu", block=cols))
        out[name] = cpu / (rows * cols * 2)
        print(f"token scores {name} (Lv {lv}, Lt {lt}, E {e}): {1e6 * out[name]:.2f} CPU us per pair-direction",
              flush=True)
    return out


def token_cost_rows(per_pair: dict[str, float], shapes: dict[str, tuple[int, int, int]], used: int = 2) -> list[str]:
    rows = ["| shapes (Lv, Lt, E) | N | score matrix float16 | one checkpoint's tokens float16 | CPU, one core "
            "| GPU fp32 at 40% | GPU tf32 at 40% |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (lv, lt, e) in shapes.items():
        for n in (N_CSL, 100_000):
            evaluations = n * n * 2 * used  # every pair, both directions, each checkpoint the delta score reads
            flops = evaluations * 2 * lv * lt * e
            cpu_h = evaluations * per_pair[name] / 3600
            rows.append(f"| {name} ({lv}, {lt}, {e}) | {n:,} | {n * n * 2 / 2**30:.2f} GiB | "
                        f"{n * (lv + lt) * e * 2 / 2**30:.2f} GiB | {cpu_h:.1f} h | "
                        f"{flops / (UTILISATION * H200_FP32_PEAK):.0f} s | {flops / (UTILISATION * H200_TF32_PEAK):.0f} s |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--reference", type=Path, help="a reference run whose twins to measure (e.g. the demo's)")
    parser.add_argument("--pools", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print("## 1. twins per batch", flush=True)
    twin_table = twins(args.reference)
    print("## 4. FLOPs of a large training step", flush=True)
    fixed, per_frame = large_step_flops()
    video_flops = fixed + 117 * per_frame
    gpu_epoch_8 = N_CSL * video_flops / (8 * UTILISATION * H200_BF16_PEAK)
    print(f"{video_flops / 1e12:.2f} TFLOP per 117-frame video; epoch on 8 H200 at 40%: {gpu_epoch_8:.1f} s", flush=True)
    print("## 2. sampler time per epoch", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sampler-") as folder:
        epoch_table, pool_512_cpu = sampler_epochs(args.pools, Path(folder))
    print("## 3. planning ahead", flush=True)
    ahead_table = planning_ahead(gpu_epoch_8)
    print("## 5. token-level score cost", flush=True)
    shapes = {"tiny": (17, 20, 128), "large": (33, 40, 1024)}
    token_table = token_cost_rows(token_shapes_cost(shapes), shapes)
    if not args.out:
        return
    command = "OPENBLAS_NUM_THREADS=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    load = os.getloadavg()
    lines = [
        "# Pair Selection sampler: twins, planning cost, token-level scores", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread used; load average "
        f"at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine: wall times are upper bounds, CPU "
        f"seconds the steadier number). torch {torch.__version__}, numpy {np.__version__}. GPU figures are "
        "arithmetic, not measured.", "",
        "## 1. Same-sentence pairs (twins) per global batch of 16", "",
        "Averages over 4 planned epochs (synthetic: N = 1,000, 2-6 signers per sentence, K = 3 checkpoints, delta "
        "score). 'mask' is `--same-sentence mask` (default: twins are not negatives), 'negative' the paper's plain "
        "InfoNCE (twins are negatives with their own trajectories).", "",
        *twin_table, "",
        "## 2. Sampler CPU time per epoch (N = 18,401, global batch 32)", "",
        f"Pooled vectors: random, E = {E}, K = {K}; token: random float16 scores read through a memory map, as "
        "the token-level cache is.", "",
        *epoch_table, "",
        "## 3. Planned ahead: what the sampler costs the GPU epoch", "",
        f"A `large` training step, counted: {fixed / 1e9:.0f} GFLOP + {per_frame / 1e9:.2f} GFLOP per 224 px frame "
        f"(forward + backward, FlopCounterMode at 8 and 16 frames), so {video_flops / 1e12:.2f} TFLOP per "
        f"PHOENIX-length video (117 frames). An epoch of N = 18,401 at 40% of an H200's {H200_BF16_PEAK / 1e12:.0f} "
        f"TFLOP/s bf16: {N_CSL * video_flops / (UTILISATION * H200_BF16_PEAK):.0f} s on one GPU, "
        f"{gpu_epoch_8:.1f} s on 8. Planning it on the spot (pool 512, {pool_512_cpu:.2f} CPU s above) would stall "
        f"every rank for {100 * pool_512_cpu / gpu_epoch_8:.0f}% of an 8-GPU epoch. Planned ahead, simulated at "
        "that epoch time (each step sleeps its share, as a process waiting on its GPU does):", "",
        *ahead_table, "",
        "## 5. Token-level scores: every pair once per run", "",
        "CPU: measured per (pair, direction, checkpoint) on one core at each shape, times 2 directions x 2 "
        "checkpoints (delta) x N^2. GPU: 2 Lv Lt E FLOPs per evaluation at 40% of an H200's "
        f"{H200_FP32_PEAK / 1e12:.0f} TFLOP/s fp32 or {H200_TF32_PEAK / 1e12:.0f} TFLOP/s tf32 (arithmetic; the "
        "masked max over [Lv, Lt] adds memory traffic that these figures leave out). Split over W ranks, each does "
        "1/W.", "",
        *token_table, "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
