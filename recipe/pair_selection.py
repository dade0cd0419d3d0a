"""Pair Selection: PS scores of negative pairs, curriculum batches, and the optional in-loss negative mask.

Scores. For a negative pair (video of sample i, text of sample j != i) the similarity s_t(i, j) at the
reference checkpoints t = 0..K-1 is its trajectory (`recipe.trajectory_store`). `PairScorer` turns it into
one number per pair:

    delta  s_{K-1} - s_0                      (the paper's PS score)
    mean   mean_t s_t
    slope  least-squares slope of s_t against the checkpoint index t
    var    population variance of s_t over t
    last   s_{K-1}                            (no-trajectory ablation: the last reference checkpoint only)

The similarity s_t is the paper's: the one the loss trains with (`--ps-similarity`, default the loss's
`--similarity`, token-level by default). `token` is CiCo late interaction on the stored token embeddings
(`recipe.similarity`), scored for every pair once per run (`recipe.token_scores`: blockwise, on the run's
device, cached); `cls` and `mean` are dot products of one stored vector per sample (the first token; the
L2-normalised masked mean of the tokens), computed on demand like `pooled`, which is `mean` under the name
of our earlier default. The greedy builder and the mask use only sym(i, j) = score(i, j) + score(j, i).

Same-sentence pairs ("twins": two signers' videos of one sentence). Which pairs are negatives follows the
loss's `--same-sentence` mode: with `mask` (our default) or `positive` a twin is not a negative, so its
score is NaN; with `negative` (the paper's plain InfoNCE) a twin is a negative like any other pair with its
own trajectory score, and only i == j is NaN.

Easy and hard (see `recipe.curriculum`): a low score is easy (the pair was pushed apart), a high score is
hard; alpha = 0 takes the easiest candidate, alpha = 1 the hardest.

Batches. `CurriculumBatchSampler` builds every global batch greedily (the paper): a random seed sample,
then B - 1 times: every candidate c gets the change in batch score if it joined, the sum over members b of
sym(c, b); candidates are sorted ascending and the one at quantile alpha(epoch) joins. Candidates are all
samples not yet used this epoch, or, with `pool_size=P`, P of them drawn at random once per batch (bounds
the cost for large N). When twins are not negatives (`mask`, `positive`), a twin's pair with a member adds
nothing real to the batch score; counting it as 0 (as we did) is an arbitrary value that pulls twins towards
or away from whatever quantile 0 sits at. Instead, when member b joins, each candidate twin of b takes the
b-entry of a randomly drawn candidate that is a negative of b (hot-deck imputation within b's column): its
sum is then distributed like any other candidate's, so the builder neither seeks nor avoids twins for the
fill value's sake. Twins whose own trajectories are alike (the same sentence: identical text, similar
videos) still rank alike, as in the paper's plain InfoNCE. benchmarks/results/sampler.md measures twins per
batch, PS against random. With `negative`, every pair counts with its own score (the paper).
Each sample appears at most once per epoch; with drop_last=True the N mod B samples left at the end of the
epoch are skipped (a different random set each epoch, because the seeds are random), with drop_last=False
they form a last, smaller batch. The whole epoch is planned from (seed, epoch) alone; `rank_slice` cuts a
rank's contiguous part (the loss gathers ranks in order, so the global batch is rebuilt exactly).
`recipe.batch_planning` plans the next epoch in the background on rank 0 and hands every rank the same plan.
`RandomBatchSampler` is the random-negatives arm with the same interface.

Mask (our extension, off by default: `--ps-keep-fraction 1.0`, every in-batch negative counts as in the
paper). `PairSelectionMask` is the loss's selection hook: for each local sample it ranks its negatives in
the global batch by sym / 2 and keeps a window of `keep_fraction` of them whose position follows alpha: at
alpha = 0 the easiest ones, at alpha = 1 the hardest. At least one negative per row is kept when the row has
any; same-sentence pairs and the positive are never kept by it (the loss decides about twins).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from recipe.curriculum import CurriculumSchedule, epoch_progress
from recipe.trajectory_store import Trajectory

SCORES = ("delta", "mean", "slope", "var", "last")
SIMILARITIES = ("token", "cls", "mean", "pooled")
SAME_SENTENCE_MODES = ("mask", "positive", "negative")  # the loss's modes (recipe.contrastive)
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


def score_weights(score: str, k: int) -> tuple[torch.Tensor | None, list[int]]:
    """(w over the K checkpoints or None for the variance, the checkpoints the score reads)."""
    weights = _checkpoint_weights(score, k)
    used = list(range(k)) if weights is None else torch.nonzero(weights).view(-1).tolist()
    return weights, used


class PairScorer:
    """PS scores of (video sample, text sample) pairs from a `Trajectory` (see the module docstring).

    `symmetric_scores` (token similarity only) is the precomputed sym matrix, e.g. from
    `recipe.token_scores.cached_symmetric_scores`; without it the matrix is computed in this process on first
    use (on `device`).
    """

    def __init__(
        self,
        trajectory: Trajectory,
        score: str = "delta",
        similarity: str = "pooled",
        same_sentence: str = "mask",
        symmetric_scores=None,
        device: torch.device | str = "cpu",
        chunk_size: int | None = None,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"unknown PS score {score!r}; choose one of {SCORES}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; choose one of {SIMILARITIES}")
        if same_sentence not in SAME_SENTENCE_MODES:
            raise ValueError(f"unknown same_sentence mode {same_sentence!r}; choose one of {SAME_SENTENCE_MODES}")
        k = trajectory.num_checkpoints
        if score in ("delta", "slope", "var") and k < 2:
            raise ValueError(
                f"PS score {score!r} needs at least 2 reference checkpoints, {trajectory.paths[0].parent} has {k}: "
                "record the reference run longer or more often (--record-trajectory-every)"
            )
        if similarity == "token" and not trajectory.has_tokens:
            raise ValueError(
                f"similarity 'token' needs token embeddings in the reference checkpoints ({trajectory.paths[0].parent}): "
                "record the reference run with --similarity token, or score with --ps-similarity cls / mean / pooled"
            )
        if similarity == "cls" and not trajectory.has_cls:
            raise ValueError(f"similarity 'cls' needs CLS vectors or token embeddings in the reference checkpoints "
                             f"({trajectory.paths[0].parent}); score with --ps-similarity mean / pooled instead")
        self.trajectory = trajectory
        self.score = score
        self.similarity = similarity
        self.same_sentence = same_sentence
        self.twins_are_negatives = same_sentence == "negative"
        self.device = torch.device(device)
        self.chunk_size = chunk_size
        self.sample_ids = trajectory.sample_ids
        self.sentence_ids = trajectory.sentence_ids
        # Only checkpoints with a non-zero weight enter a linear score (delta reads the first and the last).
        self.weights, used = score_weights(score, k)
        self._used = torch.tensor(used, dtype=torch.int64)
        self._vectors = None
        self._symmetric = symmetric_scores
        self._tokens: dict[int, tuple] = {}
        if similarity != "token":
            video, text = trajectory.cls_vectors() if similarity == "cls" else (trajectory.video, trajectory.text)
            # Sample-major float32 copy of the used checkpoints, [N, 2 (video, text), K', E]: gathering rows of it
            # is a memcpy, whereas gathering fp16 [K, N, E] columns costs ~10x more (measured).
            both = torch.stack([video[self._used], text[self._used]])  # [2, K', N, E]
            self._vectors = both.permute(2, 0, 1, 3).float().contiguous()

    @property
    def num_samples(self) -> int:
        return self.trajectory.num_samples

    # --- which pairs are negatives ------------------------------------------------------------------
    def negative_pairs(self, rows: torch.Tensor, cols: torch.Tensor, twins_are_negatives: bool | None = None) -> torch.Tensor:
        """bool [r, c] over trajectory positions: True where (video row, text col) is a negative pair."""
        twins = self.twins_are_negatives if twins_are_negatives is None else twins_are_negatives
        if twins:
            return rows[:, None] != cols[None, :]
        return self.sentence_ids[rows][:, None] != self.sentence_ids[cols][None, :]

    # --- raw similarities and scores -----------------------------------------------------------------
    def _checkpoint_tokens(self, t: int) -> tuple:
        if t not in self._tokens:  # directional token scores are for tests and analysis: keep what they read
            self._tokens[t] = self.trajectory.checkpoint_tokens(t)
        return self._tokens[t]

    def _token_similarities(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        from recipe.similarity import similarity  # late: vector scoring must not need the model code

        options = {"kind": "token"}
        if self.chunk_size is not None:
            options["chunk_size"] = self.chunk_size
        out = []
        for t in self._used.tolist():
            video, video_mask, text, text_mask = self._checkpoint_tokens(t)
            out.append(similarity(video[rows].float(), video_mask[rows], text[cols].float(), text_mask[cols],
                                  **options).float())
        return torch.stack(out)

    def _similarities(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """s_t(row video, col text) for the used checkpoints: float32 [K', r, c]."""
        if self._vectors is None:
            return self._token_similarities(rows, cols)
        video = self._vectors[:, 0].index_select(0, rows).transpose(0, 1)  # [K', r, E]
        text = self._vectors[:, 1].index_select(0, cols).transpose(0, 1)
        return torch.bmm(video, text.transpose(1, 2))

    def _raw_scores(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Scores of every (row, col) position pair, float32 [r, c], nothing masked."""
        if self.weights is not None and self._vectors is not None:
            # A linear score is one matmul over the concatenated, weighted checkpoints.
            w = self.weights[self._used].view(1, -1, 1)
            video = (self._vectors[:, 0].index_select(0, rows) * w).reshape(rows.numel(), -1)
            text = self._vectors[:, 1].index_select(0, cols).reshape(cols.numel(), -1)
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

    def symmetric_scores(self):
        """The precomputed sym matrix of the token similarity (computed here on first use if none was given)."""
        if self._symmetric is None:
            from recipe.token_scores import compute_symmetric_scores

            self._symmetric = compute_symmetric_scores(self.trajectory, self.weights, self._used.tolist(), "token",
                                                       self.device)
        return self._symmetric

    def _raw_symmetric(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        if self._vectors is None:
            return torch.from_numpy(self.symmetric_scores().block(rows.numpy(), cols.numpy()))
        return self._raw_scores(rows, cols) + self._raw_scores(cols, rows).T

    def score_block(self, row_ids, col_ids) -> torch.Tensor:
        """PS scores of (video row_ids[i], text col_ids[j]): float32 [r, c]; NaN where not a negative pair."""
        rows, cols = self.trajectory.positions(row_ids), self.trajectory.positions(col_ids)
        return self._raw_scores(rows, cols).masked_fill_(~self.negative_pairs(rows, cols), float("nan"))

    def symmetric_block(self, row_ids, col_ids, twins_are_negatives: bool | None = None) -> torch.Tensor:
        """sym = score(i, j) + score(j, i) of the id pairs: float32 [r, c]; NaN where not a negative pair."""
        rows, cols = self.trajectory.positions(row_ids), self.trajectory.positions(col_ids)
        negative = self.negative_pairs(rows, cols, twins_are_negatives)
        return self._raw_symmetric(rows, cols).masked_fill_(~negative, float("nan"))

    def batch_contributions(self, positions: np.ndarray) -> Callable[[int], np.ndarray]:
        """For a fixed set of trajectory positions, f(j) = sym(p, p_j) for every p in positions (float32, nothing
        masked): what p_j adds to the batch score of a batch holding p, if the pair is a negative. Batch
        construction calls f once per added member, so the gathering is done once here."""
        positions = torch.as_tensor(np.asarray(positions), dtype=torch.int64)
        if self._vectors is None:
            scores, cols = self.symmetric_scores(), positions.numpy()
            return lambda j: scores.row(int(cols[j]), cols)
        if self.weights is not None:
            # score(a, b) + score(b, a) = R[a] . C[b] with R = [v_t ; w_t]_t and C = [c_t w_t ; c_t v_t]_t:
            # one matrix-vector product per added member.
            gathered = self._vectors.index_select(0, positions).numpy()  # [n, 2, K', E]
            rows = gathered.reshape(len(positions), -1)
            w = self.weights[self._used].numpy().reshape(1, -1, 1)
            return lambda j: rows @ (gathered[j, ::-1] * w).reshape(-1)  # C[j]: only members need it

        def contributions_generic(j: int) -> np.ndarray:
            member = positions[j : j + 1]
            return (self._raw_scores(positions, member)[:, 0] + self._raw_scores(member, positions)[0]).numpy()

        return contributions_generic


# --- curriculum batches ------------------------------------------------------------------------------
def quantile_index(alpha: float, n: int) -> int:
    """Index of the alpha-quantile in an ascending list of n items (nearest rank; 0 -> first, 1 -> last)."""
    return int(math.floor(alpha * (n - 1) + 0.5))


def build_greedy_batch(
    scorer: PairScorer,
    seed: int,
    candidates: np.ndarray,
    batch_size: int,
    alpha: float,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Grow a batch from trajectory position `seed`: batch_size - 1 times, take the candidate at quantile alpha of
    the change in batch score (twin entries imputed when twins are not negatives; see the module docstring).
    `rng` draws the donors of the imputed entries. Returns the member positions in the order they joined."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if batch_size - 1 > len(candidates):
        raise ValueError(f"{len(candidates)} candidates cannot fill a batch of {batch_size}")
    rng = np.random.default_rng(int(seed)) if rng is None else rng
    positions = np.concatenate([[int(seed)], candidates])
    contributions = scorer.batch_contributions(positions)
    sentences = scorer.sentence_ids.numpy()[positions]
    impute_twins = not scorer.twins_are_negatives
    total = np.zeros(len(positions), dtype=np.float32)  # change in batch score if positions[i] joined
    available = np.ones(len(positions), dtype=bool)
    available[0] = False
    last, members = 0, [int(seed)]
    for step in range(batch_size - 1):
        added = contributions(last)  # the new member's column: sym(candidate, member) for every candidate
        if impute_twins:
            # A twin of the new member is not its negative: its entry of this column is drawn from the entries of
            # the candidates that are (hot-deck imputation), so it is distributed like any other candidate's.
            twins = available & (sentences == sentences[last])
            donors = np.flatnonzero(available & (sentences != sentences[last]))
            if twins.any() and len(donors):
                added = added.copy()
                added[twins] = added[rng.choice(donors, size=int(twins.sum()))]
        total += added
        value = total.copy()
        # Members hold NaN, which numpy's partition orders after every number, so the available candidates are
        # always the first n - step entries.
        value[~available] = np.nan
        k = quantile_index(alpha, len(candidates) - step)
        last = int(np.argpartition(value, k)[k])
        available[last] = False
        members.append(int(positions[last]))
    return members


def same_sentence_pairs(batches: Sequence[Sequence[int]], sample_ids, sentence_ids) -> float:
    """Mean number of same-sentence pairs ("twins") per batch: the measure of twins in PS and random batches."""
    sentence_of = dict(zip(np.asarray(sample_ids).tolist(), np.asarray(sentence_ids).tolist()))
    counts = []
    for batch in batches:
        _, per_sentence = np.unique([sentence_of[int(i)] for i in batch], return_counts=True)
        counts.append(int((per_sentence * (per_sentence - 1) // 2).sum()))
    return float(np.mean(counts)) if counts else 0.0


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
        first_epoch: int = 0,
    ) -> None:
        super().__init__(scorer.num_samples, global_batch_size, seed, drop_last)
        if pool_size is not None and pool_size < global_batch_size - 1:
            raise ValueError(f"pool_size {pool_size} is smaller than a batch ({global_batch_size} - 1 candidates)")
        if not 0 <= first_epoch < num_epochs:
            raise ValueError(f"the curriculum's first epoch {first_epoch} is outside the run's {num_epochs} epochs")
        self.scorer = scorer
        self.schedule = schedule
        self.num_epochs = num_epochs
        self.pool_size = pool_size
        self.first_epoch = first_epoch
        """Epoch the curriculum starts at (0; with --reference-run self the first Pair Selection epoch)."""

    def alpha(self, epoch: int) -> float:
        """alpha of epoch e: the schedule at (e - first) / (E - first), the paper's e / E over the PS epochs."""
        return self.schedule.alpha_at_epoch(epoch - self.first_epoch, self.num_epochs - self.first_epoch)

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
            members = build_greedy_batch(self.scorer, seed, rest, size, alpha, rng)
            alive[members] = False
            batches.append(sample_ids[members].tolist())
        return batches


# --- the loss's selection hook -------------------------------------------------------------------------
class PairSelectionMask:
    """Selection hook for `recipe.contrastive`: (local ids [b], global ids [G]) -> bool [b, G] negatives to keep."""

    def __init__(
        self, scorer: PairScorer, schedule: CurriculumSchedule, num_epochs: int, keep_fraction: float = 0.5,
        first_epoch: int = 0,
    ) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
        self.scorer = scorer
        self.schedule = schedule
        self.num_epochs = num_epochs
        self.keep_fraction = keep_fraction
        self.first_epoch = first_epoch
        self.progress = 0.0

    def set_epoch(self, epoch: int) -> None:
        """The window follows the same alpha as the epoch's batches: x = (e - first) / (E - first)."""
        self.progress = epoch_progress(max(0, epoch - self.first_epoch), self.num_epochs - self.first_epoch)

    def set_progress(self, progress: float) -> None:
        """Progress x in [0, 1] of the curriculum (set_epoch sets the paper's e / E)."""
        self.progress = min(1.0, max(0.0, float(progress)))

    @property
    def alpha(self) -> float:
        return self.schedule.alpha(self.progress)

    def __call__(self, local_ids: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
        device = local_ids.device if isinstance(local_ids, torch.Tensor) else torch.device("cpu")
        local = torch.as_tensor(local_ids).detach().cpu().long().view(-1)
        full = torch.as_tensor(global_ids).detach().cpu().long().view(-1)
        # The loss applies one mask to both directions, so rank pairs by the mean of both directions. Twins are
        # the loss's business (--same-sentence): the mask never keeps them, whatever the scorer's mode.
        scores = 0.5 * self.scorer.symmetric_block(local, full, twins_are_negatives=False)
        valid = ~torch.isnan(scores)
        n_valid = valid.sum(dim=1)
        n_keep = torch.clamp(torch.ceil(self.keep_fraction * n_valid.double()).long(), min=1)
        n_keep = torch.minimum(n_keep, n_valid)
        start = torch.floor(self.alpha * (n_valid - n_keep).double() + 0.5).long()
        order = torch.argsort(scores.masked_fill(~valid, float("inf")), dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
        keep = valid & (rank >= start[:, None]) & (rank < (start + n_keep)[:, None])
        return keep.to(device)
