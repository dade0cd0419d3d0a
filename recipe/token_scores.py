"""Token-level (CiCo) Pair Selection scores of every pair: computed once per run, blockwise, on the run's
device, split over the ranks, and cached on disk.

Why all pairs, once. A PS score is a function of the similarity trajectory s_t(i, j) of video i and text j
over the reference checkpoints t. With pooled vectors s_t is one dot product and the sampler computes what
it needs on the fly (`recipe.pair_selection`). Token-level similarity (each token's best match on the
other side, averaged, both directions) costs ~2 Lv Lt E flops per pair and checkpoint, 10^3-10^4 times a
dot product, and the sampler asks for 2 P N pairs per epoch (pool size P) and the loss mask for b x G per
step: recomputing them every epoch would cost more than computing every pair once (N / 2P epochs' worth,
~18 at N = 18,401, P = 512; a stage-1 run has 80). So the PS run computes, once, for every pair

    sym[i, j] = score(i, j) + score(j, i)

(the greedy batch builder and the loss mask only ever use this symmetric sum), with each checkpoint's
similarities for a block of pairs computed once and accumulated into the score in float32, then stored as
float16 (one rounding, relative error <= 2^-11). Memory: the token embeddings of one checkpoint at a time
plus a float32 accumulator of this rank's rows (x3 for the variance score); the matrix itself is N^2 x 2
bytes on disk, read back row by row through a memory map (the page cache is shared by the ranks of a node).
Costs at N = 18,401 and 100k: benchmarks/results/sampler.md.

Layout: RUN/ps_scores/KEY/rows-{start:08d}-{stop:08d}.npy, one row range per rank (rank r of W computes rows
[r N / W, (r+1) N / W)), and manifest.json, written by rank 0 once every part exists. KEY hashes what the
scores depend on (the reference files, their sizes and modification times, the score and the similarity),
so a resumed run reuses the cache and a changed reference never meets a stale one (rank 0 removes the
others once a new cache is complete).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from recipe.dist import broadcast_object
from recipe.trajectory_store import Trajectory

CACHE_DIR = "ps_scores"
_FORMAT = "scl-slt-symmetric-scores-v1"


def _similarity_budget(device: torch.device) -> int:
    """Bytes for one [chunk, chunk, Lv, Lt] float32 intermediate of the token similarity."""
    return (256 if device.type == "cuda" else 16) * 2**20


class SymmetricScores:
    """sym[i, j] for trajectory positions i, j (float16 storage, float32 out), as row ranges (arrays or memory maps)."""

    def __init__(self, parts: list[tuple[int, int, np.ndarray]], num_samples: int) -> None:
        parts = sorted(parts, key=lambda p: p[0])
        if not parts or parts[0][0] != 0 or parts[-1][1] != num_samples or any(
            a[1] != b[0] for a, b in zip(parts, parts[1:])
        ):
            raise ValueError(f"score row ranges {[(a, b) for a, b, _ in parts]} do not cover 0..{num_samples}")
        for start, stop, rows in parts:
            if rows.shape != (stop - start, num_samples):
                raise ValueError(f"score rows {start}..{stop} have shape {rows.shape}, expected {(stop - start, num_samples)}")
        self.parts, self.num_samples = parts, num_samples
        self._starts = [p[0] for p in parts]

    @classmethod
    def from_array(cls, matrix: np.ndarray) -> "SymmetricScores":
        return cls([(0, matrix.shape[0], matrix)], matrix.shape[0])

    def row(self, position: int, cols: np.ndarray) -> np.ndarray:
        """sym[position, cols] as float32 (reads only the pages that hold those columns)."""
        index = bisect.bisect_right(self._starts, position) - 1
        start, _, rows = self.parts[index]
        return np.asarray(rows[position - start][cols], dtype=np.float32)

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        cols = np.asarray(cols)
        return np.stack([self.row(int(r), cols) for r in np.asarray(rows).reshape(-1)]) if len(rows) else np.zeros(
            (0, len(cols)), dtype=np.float32)


# --- computing rows ------------------------------------------------------------------------------------
def score_rows(
    trajectory: Trajectory,
    weights: torch.Tensor | None,
    used: list[int],
    start: int,
    stop: int,
    kind: str = "token",
    device: torch.device | str = "cpu",
    block: int = 1024,
) -> torch.Tensor:
    """sym[start:stop, :] in float32 on the CPU.

    `weights` (over all K checkpoints) make the score linear, score = sum_t w_t s_t; None means the variance
    of s_t over the checkpoints in `used`. Pairs are processed in [block x block] tiles on `device`, each tile
    of each checkpoint once, both directions (video i with text j, and video j with text i) per tile.
    """
    from recipe.similarity import similarity  # the loss's own definition of the similarity

    device = torch.device(device)
    n, rows = trajectory.num_samples, stop - start
    linear = weights is not None
    acc = torch.zeros((rows, n), dtype=torch.float32)
    if not linear:  # var(s(i,j)) + var(s(j,i)) from running sums of each direction and of the squares
        forward_sum, backward_sum = torch.zeros_like(acc), torch.zeros_like(acc)
    for t in used:
        video, video_mask, text, text_mask = trajectory.checkpoint_tokens(t)
        length = max(video.shape[1], 1) * max(text.shape[1], 1)
        chunk = max(1, int((_similarity_budget(device) / (4 * length)) ** 0.5))
        on_device = lambda x, a, b: x[a:b].to(device, non_blocking=True)  # noqa: E731
        for r0 in range(start, stop, block):
            r1 = min(stop, r0 + block)
            rv, rvm = on_device(video, r0, r1).float(), on_device(video_mask, r0, r1)
            rt, rtm = on_device(text, r0, r1).float(), on_device(text_mask, r0, r1)
            for c0 in range(0, n, block):
                c1 = min(n, c0 + block)
                cv, cvm = on_device(video, c0, c1).float(), on_device(video_mask, c0, c1)
                ct, ctm = on_device(text, c0, c1).float(), on_device(text_mask, c0, c1)
                forward = similarity(rv, rvm, ct, ctm, kind=kind, chunk_size=chunk).float()  # video row, text col
                backward = similarity(cv, cvm, rt, rtm, kind=kind, chunk_size=chunk).float().T  # video col, text row
                tile = (slice(r0 - start, r1 - start), slice(c0, c1))
                if linear:
                    acc[tile] += (float(weights[t]) * (forward + backward)).cpu()
                else:
                    forward_sum[tile] += forward.cpu()
                    backward_sum[tile] += backward.cpu()
                    acc[tile] += (forward.square() + backward.square()).cpu()
    if linear:
        return acc
    k = len(used)
    return acc / k - (forward_sum / k).square() - (backward_sum / k).square()


def compute_symmetric_scores(trajectory: Trajectory, weights, used, kind: str = "token",
                             device: torch.device | str = "cpu") -> SymmetricScores:
    """Every row in this process, kept in memory (tests, small single-process runs)."""
    matrix = score_rows(trajectory, weights, used, 0, trajectory.num_samples, kind, device).half().numpy()
    return SymmetricScores.from_array(matrix)


# --- the cached, distributed computation --------------------------------------------------------------
def cache_key(trajectory: Trajectory, score: str, kind: str) -> str:
    files = []
    for path in trajectory.paths:
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    description = {"format": _FORMAT, "files": files, "num_samples": trajectory.num_samples, "score": score,
                   "similarity": kind}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def rank_rows(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def _part_name(start: int, stop: int) -> str:
    return f"rows-{start:08d}-{stop:08d}.npy"


def _open_cache(folder: Path, num_samples: int) -> SymmetricScores:
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [(start, stop, np.load(folder / _part_name(start, stop), mmap_mode="r")) for start, stop in manifest["parts"]]
    return SymmetricScores(parts, num_samples)


def _cache_is_complete(folder: Path, num_samples: int) -> bool:
    try:
        _open_cache(folder, num_samples)
        return True
    except (OSError, ValueError, KeyError):
        return False


def cached_symmetric_scores(
    trajectory: Trajectory,
    score: str,
    weights,
    used,
    kind: str,
    cache_root: str | os.PathLike,
    device: torch.device | str = "cpu",
) -> SymmetricScores:
    """Collective (every rank calls it): reuse RUN/ps_scores/KEY when complete, else compute this rank's rows
    on `device`, write them, and open every rank's rows as memory maps.

    Rank 0 alone decides whether the cache is complete and tells the others, so ranks that see the shared
    file system at different moments cannot disagree.
    """
    folder = Path(cache_root) / cache_key(trajectory, score, kind)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    n = trajectory.num_samples
    complete = broadcast_object(_cache_is_complete(folder, n) if rank == 0 else None)
    if not complete:
        folder.mkdir(parents=True, exist_ok=True)
        start, stop = rank_rows(n, rank, world)
        rows = score_rows(trajectory, weights, used, start, stop, kind, device).half().numpy()
        part = folder / _part_name(start, stop)
        tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, rows)
        os.replace(tmp, part)  # a part exists only when complete
        if distributed:
            dist.barrier()
        if rank == 0:
            manifest = {"format": _FORMAT, "num_samples": n, "score": score, "similarity": kind,
                        "epochs": trajectory.epochs, "parts": [rank_rows(n, r, world) for r in range(world)]}
            tmp = folder / f".manifest.json.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, folder / "manifest.json")
            for stale in Path(cache_root).iterdir():  # scores of an earlier reference (N^2 bytes each): gone
                if stale.is_dir() and stale != folder:
                    shutil.rmtree(stale, ignore_errors=True)
        if distributed:
            dist.barrier()
    return _open_cache(folder, n)
