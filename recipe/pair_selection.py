"""Pair Selection: PS scores of negative pairs, curriculum batches, and the negative mask used in the loss.

Scores. For a negative pair (video of sample i, text of sample j != i) the similarity s_t(i, j) at the
reference checkpoints t = 0..K-1 is its trajectory (`recipe.trajectory_store`). `PairScorer` turns it into
one number per pair:

    delta  s_{K-1} - s_0                      (the paper's PS score)
    mean   mean_t s_t
    slope  least-squares slope of s_t against the checkpoint index t
    var    population variance of s_t over t
    last   s_{K-1}                            (no-trajectory ablation: the last reference checkpoint only)

Pairs of the same sentence (which includes i == j) are never negatives: their score is NaN. Scores are
computed blockwise on demand from O(N) stored embeddings, never as an N x N matrix. With the default
`similarity="pooled"` s_t is the cosine of the stored pooled vectors (one matmul); "token", "cls" and
"mean" call `recipe.similarity` on the stored token embeddings (exact, slower: for the loss mask).

Easy and hard (see `recipe.curriculum`): a low score is easy (the pair was pushed apart), a high score is
hard; alpha = 0 takes the easiest candidate, alpha = 1 the hardest.

Batches. `CurriculumBatchSampler` builds every global batch greedily: a random seed sample, then B - 1
times: for every candidate c the change in batch score if c joined, sum over members b of
score(c, b) + score(b, c) (NaN same-sentence pairs count 0), is kept as a running vector updated once per
added member; candidates are sorted ascending and the one at quantile alpha(epoch) joins. Candidates are
all samples not yet used this epoch, or, with `pool_size=P`, P of them drawn at random once per batch
(bounds the cost for large N). Each sample appears at most once per epoch; with drop_last=True the
N mod B samples left at the end of the epoch are skipped (a different random set each epoch, because the
seeds are random), with drop_last=False they form a last, smaller batch. The whole epoch is planned from
(seed, epoch) alone, so every rank computes the same batches; `rank_slice` cuts this rank's contiguous part
(the loss gathers ranks in order, so the global batch is rebuilt exactly). `RandomBatchSampler` is the
random-negatives arm with the same interface.

Mask. `PairSelectionMask` is the loss's selection hook: for each local sample it ranks its negatives in the
global batch by the symmetric score (score(i, j) + score(j, i)) / 2 and keeps a window of
`keep_fraction` of them whose position follows alpha: at alpha = 0 the easiest ones, at alpha = 1 the
hardest, in between a window sliding up the ranking. At least one negative per row is kept when the row
has any; same-sentence pairs and the positive are never kept (the loss always keeps the positive).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from recipe.curriculum import CurriculumSchedule, epoch_progress
from recipe.trajectory_store import Trajectory

SCORES = ("delta", "mean", "slope", "var", "last")
SIMILARITIES = ("pooled", "token", "cls", "mean")
_BLOCK_ELEMENTS = 1 << 24  # bound on [K, rows, cols] intermediates (64 MiB of float32)


def _checkpoint_weights(score: str, k: int) -> torch.Tensor | None:
    """w such that score = sum_t w_t s_t for the linear scores; None for the variance."""
    if score == "delta":
        w = torch.zeros(k)
        w[0], w[-1] = -1.0, 1.0
        return w
    if score == "mean":
        return torch.full((k,), 1.0 / k)
    if score == "slope":
        t = torch.arange(k, dtype=torch.float64)
        centred = t - t.mean()
        return (centred / (centred**2).sum()).float()
    if score == "last":
        w = torch.zeros(k)
        w[-1] = 1.0
        return w
    return None


class PairScorer:
    """PS scores of (video sample, text sample) pairs, computed on demand from a `Trajectory`."""

    def __init__(
        self,
        trajectory: Trajectory,
        score: str = "delta",
        similarity: str = "pooled",
        chunk_size: int | None = None,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"unknown PS score {score!r}; choose one of {SCORES}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; choose one of {SIMILARITIES}")
        k = trajectory.num_checkpoints
        if score in ("delta", "slope", "var") and k < 2:
            raise ValueError(
                f"PS score {score!r} needs at least 2 reference checkpoints, {trajectory.paths[0].parent} has {k}: "
                "record the reference run longer or more often (--record-trajectory-every)"
            )
        if similarity != "pooled" and not trajectory.has_tokens:
            raise ValueError(
                f"similarity {similarity!r} needs token embeddings in the reference checkpoints "
                f"({trajectory.paths[0].parent}); load them (load_tokens=True) or use similarity='pooled'"
            )
        self.trajectory = trajectory
        self.score = score
        self.similarity = similarity
        self.chunk_size = chunk_size
        self.sample_ids = trajectory.sample_ids
        self.sentence_ids = trajectory.sentence_ids
        self.weights = _checkpoint_weights(score, k)
        # Only checkpoints with a non-zero weight enter a linear score (delta reads the first and the last).
        self._used = torch.arange(k) if self.weights is None else torch.nonzero(self.weights).view(-1)
        self._pooled = None
        if similarity == "pooled":
            # Sample-major float32 copy of the used checkpoints, [N, 2 (video, text), K', E]: gathering rows of it
            # is a memcpy, whereas gathering fp16 [K, N, E] columns costs ~10x more (measured).
            both = torch.stack([trajectory.video[self._used], trajectory.text[self._used]])  # [2, K', N, E]
            self._pooled = both.permute(2, 0, 1, 3).float().contiguous()

    @property
    def num_samples(self) -> int:
        return self.trajectory.num_samples

    # --- raw similarities ------------------------------------------------------------------------
    def _token_similarities(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        from recipe.similarity import similarity  # late: pooled scoring must not need the model code

        traj = self.trajectory
        options = {"kind": self.similarity}
        if self.chunk_size is not None:
            options["chunk_size"] = self.chunk_size
        out = [
            similarity(
                traj.video_tokens[t, rows].float(),
                traj.video_mask[t, rows],
                traj.text_tokens[t, cols].float(),
                traj.text_mask[t, cols],
                **options,
            ).float()
            for t in self._used.tolist()
        ]
        return torch.stack(out)

    def _similarities(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """s_t(row video, col text) for the used checkpoints: float32 [K', r, c]."""
        if self._pooled is None:
            return self._token_similarities(rows, cols)
        video = self._pooled[:, 0].index_select(0, rows).transpose(0, 1)  # [K', r, E]
        text = self._pooled[:, 1].index_select(0, cols).transpose(0, 1)
        return torch.bmm(video, text.transpose(1, 2))

    # --- scores ----------------------------------------------------------------------------------
    def _raw_scores(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Scores of every (row, col) position pair, float32 [r, c], without the same-sentence NaNs."""
        if self.weights is not None and self._pooled is not None:
            # A linear score is one matmul over the concatenated, weighted checkpoints.
            w = self.weights[self._used].view(1, -1, 1)
            video = (self._pooled[:, 0].index_select(0, rows) * w).reshape(rows.numel(), -1)
            text = self._pooled[:, 1].index_select(0, cols).reshape(cols.numel(), -1)
            return video @ text.T
        out = torch.empty((rows.numel(), cols.numel()), dtype=torch.float32)
        step = max(1, _BLOCK_ELEMENTS // max(1, len(self._used) * cols.numel()))
        for i in range(0, rows.numel(), step):
            sims = self._similarities(rows[i : i + step], cols)
            if self.weights is None:
                out[i : i + step] = sims.var(dim=0, unbiased=False)
            else:
                out[i : i + step] = torch.einsum("k,krc->rc", self.weights[self._used], sims)
        return out

    def score_block(self, row_ids, col_ids) -> torch.Tensor:
        """PS scores of (video row_ids[i], text col_ids[j]): float32 [r, c]; NaN where not a negative pair."""
        rows, cols = self.trajectory.positions(row_ids), self.trajectory.positions(col_ids)
        same = (self.sentence_ids[rows][:, None] == self.sentence_ids[cols][None, :]) | (rows[:, None] == cols[None, :])
        return self._raw_scores(rows, cols).masked_fill_(same, float("nan"))

    def batch_contributions(self, positions: np.ndarray) -> Callable[[int], np.ndarray]:
        """For a fixed set of trajectory positions, f(j) = score(p, p_j) + score(p_j, p) for every p in positions:
        what p_j adds to the batch score of a batch holding p. Same-sentence pairs contribute 0 (they are not
        negatives). Batch construction calls f once per added member, so the gathering is done once here."""
        positions = torch.as_tensor(np.asarray(positions), dtype=torch.int64)
        sentences = self.sentence_ids[positions].numpy()
        if self.weights is not None and self._pooled is not None:
            # score(a, b) + score(b, a) = R[a] . C[b] with R = [v_t ; w_t]_t and C = [c_t w_t ; c_t v_t]_t:
            # one matrix-vector product per added member.
            gathered = self._pooled.index_select(0, positions).numpy()  # [n, 2, K', E]
            rows = gathered.reshape(len(positions), -1)
            w = self.weights[self._used].numpy().reshape(1, -1, 1)

            def contributions(j: int) -> np.ndarray:
                out = rows @ (gathered[j, ::-1] * w).reshape(-1)  # C[j]: only members need it
                out[sentences == sentences[j]] = 0.0
                return out

            return contributions

        def contributions_generic(j: int) -> np.ndarray:
            member = positions[j : j + 1]
            out = (self._raw_scores(positions, member)[:, 0] + self._raw_scores(member, positions)[0]).numpy()
            out[sentences == sentences[j]] = 0.0
            return out

        return contributions_generic


# --- curriculum batches ------------------------------------------------------------------------------
def quantile_index(alpha: float, n: int) -> int:
    """Index of the alpha-quantile in an ascending list of n items (nearest rank; 0 -> first, 1 -> last)."""
    return int(math.floor(alpha * (n - 1) + 0.5))


def build_greedy_batch(
    scorer: PairScorer, seed: int, candidates: np.ndarray, batch_size: int, alpha: float
) -> list[int]:
    """Grow a batch from trajectory position `seed`: batch_size - 1 times, take the candidate at quantile alpha of
    the change in batch score. Returns the member positions in the order they joined."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if batch_size - 1 > len(candidates):
        raise ValueError(f"{len(candidates)} candidates cannot fill a batch of {batch_size}")
    positions = np.concatenate([[int(seed)], candidates])
    contributions = scorer.batch_contributions(positions)
    # running[i] = change in batch score if positions[i] joined; members hold NaN, which numpy's partition
    # orders after every number, so the available candidates are always the first n - step entries.
    running = np.zeros(len(positions), dtype=np.float32)
    running[0] = np.nan
    last, members = 0, [int(seed)]
    for step in range(batch_size - 1):
        running += contributions(last)
        k = quantile_index(alpha, len(candidates) - step)
        last = int(np.argpartition(running, k)[k])
        running[last] = np.nan
        members.append(int(positions[last]))
    return members


def rank_slice(global_batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous part of a global batch (rank r gets items r*b .. (r+1)*b - 1)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if len(global_batch) % world_size:
        raise ValueError(
            f"a global batch of {len(global_batch)} cannot be split evenly over {world_size} ranks: use a global "
            "batch size divisible by the world size and drop_last=True"
        )
    local = len(global_batch) // world_size
    return list(global_batch[rank * local : (rank + 1) * local])


class _PlannedBatchSampler:
    """Shared behaviour: an epoch's batches are planned from (seed, epoch) alone, then handed out in order.

    `set_epoch(e)` switches to epoch e and restarts it, unless e is already the current epoch (so that a
    resume, load_state_dict then set_epoch of the same epoch, continues where it stopped). Iterating yields
    the batches not yet handed out; a finished epoch yields nothing more until the next set_epoch.
    """

    kind = "base"

    def __init__(self, num_samples: int, global_batch_size: int, seed: int, drop_last: bool) -> None:
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if drop_last and num_samples < global_batch_size:
            raise ValueError(f"{num_samples} samples cannot fill one batch of {global_batch_size} with drop_last=True")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._plan: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _build(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches (lists of sample ids) of an epoch; the last plan is cached."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._build(epoch))
        return self._plan[1]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            self.position += 1  # counted before the yield: a checkpoint taken during the step skips this batch on resume
            yield batches[self.position - 1]

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("kind", "seed", "global_batch_size", "num_samples"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has {getattr(self, key)!r}: resume "
                    "with the same data, batch size, seed and --negatives as the checkpointed run"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    rank_slice = staticmethod(rank_slice)


class RandomBatchSampler(_PlannedBatchSampler):
    """Random global batches (the random-negatives arm): a fresh permutation of the sample ids every epoch."""

    kind = "random"

    def __init__(self, sample_ids, global_batch_size: int, seed: int, drop_last: bool = True) -> None:
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        super().__init__(len(self.sample_ids), global_batch_size, seed, drop_last)

    def _build(self, epoch: int) -> list[list[int]]:
        order = self._rng(epoch).permutation(self.sample_ids)
        b = self.global_batch_size
        return [order[i : i + b].tolist() for i in range(0, len(self) * b, b)]


class CurriculumBatchSampler(_PlannedBatchSampler):
    """Pair Selection batches, greedy at the schedule's alpha for the epoch (see the module docstring)."""

    kind = "curriculum"

    def __init__(
        self,
        scorer: PairScorer,
        global_batch_size: int,
        schedule: CurriculumSchedule,
        num_epochs: int,
        seed: int,
        pool_size: int | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__(scorer.num_samples, global_batch_size, seed, drop_last)
        if pool_size is not None and pool_size < global_batch_size - 1:
            raise ValueError(f"pool_size {pool_size} is smaller than a batch ({global_batch_size} - 1 candidates)")
        self.scorer = scorer
        self.schedule = schedule
        self.num_epochs = num_epochs
        self.pool_size = pool_size

    def alpha(self, epoch: int) -> float:
        return self.schedule.alpha_at_epoch(epoch, self.num_epochs)

    def _build(self, epoch: int) -> list[list[int]]:
        rng = self._rng(epoch)
        alpha = self.alpha(epoch)
        alive = np.ones(self.num_samples, dtype=bool)
        sample_ids = self.scorer.sample_ids.numpy()
        batches = []
        for _ in range(len(self)):
            alive_positions = np.flatnonzero(alive)
            size = min(self.global_batch_size, len(alive_positions))
            seed = alive_positions[rng.integers(len(alive_positions))]
            rest = alive_positions[alive_positions != seed]
            if self.pool_size is not None and len(rest) > self.pool_size:
                rest = np.sort(rng.choice(rest, size=self.pool_size, replace=False))
            members = build_greedy_batch(self.scorer, seed, rest, size, alpha)
            alive[members] = False
            batches.append(sample_ids[members].tolist())
        return batches


# --- the loss's selection hook -------------------------------------------------------------------------
class PairSelectionMask:
    """Selection hook for `recipe.contrastive`: (local ids [b], global ids [G]) -> bool [b, G] negatives to keep."""

    def __init__(
        self, scorer: PairScorer, schedule: CurriculumSchedule, num_epochs: int, keep_fraction: float = 0.5
    ) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
        self.scorer = scorer
        self.schedule = schedule
        self.num_epochs = num_epochs
        self.keep_fraction = keep_fraction
        self.progress = 0.0

    def set_epoch(self, epoch: int) -> None:
        self.progress = epoch_progress(epoch, self.num_epochs)

    def set_progress(self, progress: float) -> None:
        """Finer than set_epoch: progress in [0, 1] of the whole run (e.g. step / total steps)."""
        self.progress = min(1.0, max(0.0, float(progress)))

    @property
    def alpha(self) -> float:
        return self.schedule.alpha(self.progress)

    def __call__(self, local_ids: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
        device = local_ids.device if isinstance(local_ids, torch.Tensor) else torch.device("cpu")
        local = torch.as_tensor(local_ids).detach().cpu().long().view(-1)
        full = torch.as_tensor(global_ids).detach().cpu().long().view(-1)
        # The loss applies one mask to both directions, so rank pairs by the mean of both directions.
        scores = 0.5 * (self.scorer.score_block(local, full) + self.scorer.score_block(full, local).T)
        valid = ~torch.isnan(scores)
        n_valid = valid.sum(dim=1)
        n_keep = torch.clamp(torch.ceil(self.keep_fraction * n_valid.double()).long(), min=1)
        n_keep = torch.minimum(n_keep, n_valid)
        start = torch.floor(self.alpha * (n_valid - n_keep).double() + 0.5).long()
        order = torch.argsort(scores.masked_fill(~valid, float("inf")), dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
        keep = valid & (rank >= start[:, None]) & (rank < (start + n_keep)[:, None])
        return keep.to(device)
