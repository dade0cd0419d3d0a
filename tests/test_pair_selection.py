"""PS scores on hand-made trajectories, blockwise scoring, batch contributions and the loss's selection mask."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe import pair_selection
from recipe.curriculum import CurriculumSchedule
from recipe.pair_selection import SCORES, PairScorer, PairSelectionMask
from recipe.trajectory_store import Trajectory


def _trajectory(video: torch.Tensor, text: torch.Tensor, sentence_ids=None, sample_ids=None, **tokens) -> Trajectory:
    k, n, _ = video.shape
    sample_ids = torch.arange(n) if sample_ids is None else torch.as_tensor(sample_ids)
    sentence_ids = sample_ids.clone() if sentence_ids is None else torch.as_tensor(sentence_ids)
    norm = lambda x: torch.nn.functional.normalize(x.float(), dim=-1).half()  # noqa: E731  (as stored)
    return Trajectory(list(range(0, 5 * k, 5)), sample_ids, sentence_ids, norm(video), norm(text), [Path("run/trajectories/ref-0000.safetensors")], **tokens)


def _random_trajectory(n: int, k: int = 3, e: int = 16, seed: int = 0, sentence_ids=None) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    return _trajectory(torch.randn(k, n, e, generator=g), torch.randn(k, n, e, generator=g), sentence_ids)


# Three samples, three checkpoints, 2-d embeddings. Videos do not move; texts rotate through Pythagorean
# directions, so every similarity is a short decimal: s_t(i, j) = video_i . text_j(t).
VIDEO = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8)]
TEXT = [  # TEXT[t][j]
    [(0.6, 0.8), (1.0, 0.0), (0.0, 1.0)],
    [(0.8, 0.6), (0.6, 0.8), (1.0, 0.0)],
    [(0.0, 1.0), (0.8, 0.6), (0.6, 0.8)],
]
# Worked out by hand from the vectors above: the trajectory of every negative pair (i, j).
HAND_TRAJECTORIES = {
    (0, 1): [1.0, 0.6, 0.8],
    (0, 2): [0.0, 1.0, 0.6],
    (1, 0): [0.8, 0.6, 1.0],
    (1, 2): [1.0, 0.0, 0.8],
    (2, 0): [1.0, 0.96, 0.8],
    (2, 1): [0.6, 1.0, 0.96],
}


def _hand_trajectory() -> Trajectory:
    video = torch.tensor([VIDEO] * 3)
    return _trajectory(video, torch.tensor(TEXT))


def _expected(score: str, s: list[float]) -> float:
    s = np.array(s)
    t = np.arange(len(s))
    return {
        "delta": s[-1] - s[0],
        "mean": s.mean(),
        "slope": np.polyfit(t, s, 1)[0],  # an independent least-squares fit
        "var": s.var(),
        "last": s[-1],
    }[score]


@pytest.mark.parametrize("score", SCORES)
def test_scores_on_hand_made_trajectories(score):
    scorer = PairScorer(_hand_trajectory(), score=score)
    block = scorer.score_block([0, 1, 2], [0, 1, 2])
    assert block.dtype == torch.float32 and block.shape == (3, 3)
    assert torch.isnan(block.diagonal()).all()  # a sample with itself is the positive, never a negative
    for (i, j), trajectory in HAND_TRAJECTORIES.items():
        # fp16 storage: 0.6 and 0.8 are stored to ~2e-4
        assert block[i, j].item() == pytest.approx(_expected(score, trajectory), abs=1e-3), (i, j)


def test_a_few_scores_written_out():
    traj = _hand_trajectory()
    delta = PairScorer(traj, "delta").score_block([0, 1, 2], [0, 1, 2])
    assert delta[0, 2].item() == pytest.approx(0.6, abs=1e-3)  # 0 -> 1 -> 0.6: rose, a hard negative
    assert delta[2, 0].item() == pytest.approx(-0.2, abs=1e-3)  # 1 -> 0.96 -> 0.8: fell, easy
    assert PairScorer(traj, "slope").score_block([0], [2]).item() == pytest.approx(0.3, abs=1e-3)
    assert PairScorer(traj, "var").score_block([1], [2]).item() == pytest.approx(0.56 / 3, abs=1e-3)
    assert PairScorer(traj, "mean").score_block([0], [1]).item() == pytest.approx(0.8, abs=1e-3)


def test_same_sentence_pairs_and_unknown_ids():
    traj = _random_trajectory(6, sentence_ids=[0, 1, 1, 2, 3, 1])
    block = PairScorer(traj).score_block([1, 2, 5, 0], [2, 5, 1, 0, 3])
    nan = torch.isnan(block)
    expected = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
    ], dtype=torch.bool)
    assert torch.equal(nan, expected)
    with pytest.raises(KeyError, match="not in the reference trajectory"):
        PairScorer(traj).score_block([0, 99], [1])


def test_scores_follow_the_ids_not_their_order():
    traj = _random_trajectory(10)
    scorer = PairScorer(traj)
    full = scorer.score_block(torch.arange(10), torch.arange(10))
    rows, cols = [7, 3, 0], [9, 1, 4, 3]
    torch.testing.assert_close(scorer.score_block(rows, cols), full[rows][:, cols], equal_nan=True)


@pytest.mark.parametrize("score", SCORES)
def test_score_block_matches_the_raw_trajectory(score, monkeypatch):
    traj = _random_trajectory(12, k=4)
    scorer = PairScorer(traj, score=score)
    monkeypatch.setattr(pair_selection, "_BLOCK_ELEMENTS", 7)  # force the chunked path for var
    rows, cols = torch.arange(12), torch.arange(12).flip(0)
    sims = np.einsum("kre,kce->krc", traj.video.float().numpy()[:, rows], traj.text.float().numpy()[:, cols])
    t = np.arange(4) - 1.5
    expected = {
        "delta": sims[-1] - sims[0],
        "mean": sims.mean(0),
        "slope": np.einsum("k,krc->rc", t / (t**2).sum(), sims),
        "var": sims.var(0),
        "last": sims[-1],
    }[score]
    got = scorer.score_block(rows, cols).numpy()
    valid = rows.numpy()[:, None] != cols.numpy()[None, :]
    np.testing.assert_allclose(got[valid], expected[valid], atol=1e-5)
    assert np.isnan(got[~valid]).all()


def test_pair_similarities_are_elementwise_trajectories():
    traj = _hand_trajectory()
    pairs = list(HAND_TRAJECTORIES)
    sims = traj.pair_similarities([i for i, _ in pairs], [j for _, j in pairs], chunk=4)
    np.testing.assert_allclose(sims.numpy().T, np.array(list(HAND_TRAJECTORIES.values())), atol=1e-3)


@pytest.mark.parametrize("score", ["delta", "var"])  # the matvec fast path and the generic path
def test_batch_contributions_are_both_directions_of_every_pair(score):
    traj = _random_trajectory(9, sentence_ids=[0, 1, 2, 3, 3, 4, 5, 6, 6])
    scorer = PairScorer(traj, score=score)
    positions = np.array([4, 0, 3, 8, 7, 2])
    contributions = scorer.batch_contributions(positions)
    sym = scorer.symmetric_block(positions, positions, twins_are_negatives=True).numpy()
    for j in range(len(positions)):
        others = np.arange(len(positions)) != j
        np.testing.assert_allclose(contributions(j)[others], sym[others, j], atol=1e-5)
    # the twins (samples 4 and 3) are scored too: whether they count is the batch builder's decision
    assert contributions(0)[2] != 0.0


def test_scores_needing_a_trajectory_refuse_a_single_checkpoint():
    traj = _random_trajectory(4, k=1)
    for score in ("delta", "slope", "var"):
        with pytest.raises(ValueError, match="at least 2 reference checkpoints"):
            PairScorer(traj, score=score)
    assert PairScorer(traj, score="last").score_block([0], [1]).shape == (1, 1)
    with pytest.raises(ValueError, match="token embeddings"):
        PairScorer(traj, score="last", similarity="token")
    with pytest.raises(ValueError, match="CLS vectors"):
        PairScorer(traj, score="last", similarity="cls")


def test_twins_are_negatives_only_under_plain_infonce():
    traj = _random_trajectory(5, sentence_ids=[0, 0, 1, 2, 2])
    ids = torch.arange(5)
    masked = PairScorer(traj, same_sentence="mask").score_block(ids, ids)
    plain = PairScorer(traj, same_sentence="negative").score_block(ids, ids)
    twins = torch.tensor([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0] * 5, [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.isnan(masked[twins]).all() and not torch.isnan(plain[twins]).any()
    assert torch.isnan(plain.diagonal()).all()  # a sample with itself is the positive in every mode
    torch.testing.assert_close(plain[~twins & ~torch.eye(5, dtype=torch.bool)],
                               masked[~twins & ~torch.eye(5, dtype=torch.bool)])


# --- token-level scores ----------------------------------------------------------------------------------
def _token_trajectory(n: int = 7, k: int = 3, e: int = 6, seed: int = 0, sentence_ids=None) -> Trajectory:
    """Token embeddings of varying lengths per sample (zero padding, as the model's features), fp16 as stored."""
    g = torch.Generator().manual_seed(seed)
    video_lengths = torch.randint(1, 6, (n,), generator=g)
    text_lengths = torch.randint(1, 4, (n,), generator=g)
    def tokens(lengths, length):  # noqa: E306
        x = torch.nn.functional.normalize(torch.randn(k, n, length, e, generator=g), dim=-1)
        mask = torch.arange(length)[None, None, :] < lengths[None, :, None].expand(k, n, 1)
        return (x * mask[..., None]).half(), mask
    video, video_mask = tokens(video_lengths, 5)
    text, text_mask = tokens(text_lengths, 3)
    pooled = lambda x, m: (x.float() * m[..., None]).sum(2) / m.sum(2, keepdim=True)  # noqa: E731
    base = _trajectory(pooled(video, video_mask), pooled(text, text_mask), sentence_ids)
    base.video_tokens, base.video_mask, base.text_tokens, base.text_mask = video, video_mask, text, text_mask
    return base


def _brute_force_token_similarity(traj: Trajectory) -> np.ndarray:
    """s[t, i, j] by loops over unpadded tokens: each token's best match on the other side, averaged, both ways."""
    k, n = traj.num_checkpoints, traj.num_samples
    s = np.zeros((k, n, n))
    for t in range(k):
        for i in range(n):
            v = traj.video_tokens[t, i][traj.video_mask[t, i]].double().numpy()
            for j in range(n):
                w = traj.text_tokens[t, j][traj.text_mask[t, j]].double().numpy()
                pairs = v @ w.T
                s[t, i, j] = (pairs.max(axis=1).mean() + pairs.max(axis=0).mean()) / 2
    return s


def _scores_from_similarities(s: np.ndarray, score: str) -> np.ndarray:
    return np.stack([[[_expected(score, s[:, i, j]) for j in range(s.shape[2])] for i in range(s.shape[1])]])[0]


@pytest.mark.parametrize("score", SCORES)
def test_token_scores_equal_a_brute_force_computation(score):
    """Directional scores, the symmetric matrix the sampler uses (fp16 storage) and the mask's ranking input, all
    against loops over the unpadded tokens. (Broken variant tried: the symmetric matrix built from one direction
    twice, `backward = forward` in token_scores.score_rows: fails.)"""
    traj = _token_trajectory(sentence_ids=[0, 1, 1, 2, 3, 4, 4])
    expected = _scores_from_similarities(_brute_force_token_similarity(traj), score)
    scorer = PairScorer(traj, score=score, similarity="token")
    ids = torch.arange(7)
    got = scorer.score_block(ids, ids).numpy()
    negative = traj.sentence_ids[:, None].numpy() != traj.sentence_ids[None, :].numpy()
    np.testing.assert_allclose(got[negative], expected[negative], atol=1e-5)
    assert np.isnan(got[~negative]).all()
    sym = expected + expected.T
    stored = scorer.symmetric_scores().block(np.arange(7), np.arange(7))
    np.testing.assert_allclose(stored, sym, rtol=2**-10, atol=1e-4)  # one fp16 rounding
    np.testing.assert_allclose(scorer.symmetric_block(ids, ids).numpy()[negative], sym[negative], rtol=2**-10, atol=1e-4)
    contributions = scorer.batch_contributions(np.array([3, 0, 6]))
    np.testing.assert_allclose(contributions(2), sym[[3, 0, 6], 6], rtol=2**-10, atol=1e-4)


def test_token_scores_reduce_to_pooled_for_single_token_samples():
    base = _random_trajectory(5, k=2, e=8)
    traj = Trajectory(
        base.epochs, base.sample_ids, base.sentence_ids, base.video, base.text, base.paths,
        video_tokens=base.video[:, :, None], video_mask=torch.ones(2, 5, 1, dtype=torch.bool),
        text_tokens=base.text[:, :, None], text_mask=torch.ones(2, 5, 1, dtype=torch.bool),
    )
    ids = torch.arange(5)
    token = PairScorer(traj, similarity="token").score_block(ids, ids)
    pooled = PairScorer(traj).score_block(ids, ids)
    torch.testing.assert_close(token, pooled, equal_nan=True, atol=1e-5, rtol=0)


def test_cls_and_mean_scores_are_the_losses_similarities(tmp_path):
    """Recorded through the trajectory store, `cls` scores token 0 and `mean` / `pooled` the masked means: the
    same numbers recipe.similarity gives the loss for those kinds."""
    from recipe.similarity import similarity
    from recipe.trajectory_store import load_trajectory, save_reference_checkpoint

    source = _token_trajectory(n=6, k=2)
    for t in range(2):
        video, text = source.video_tokens[t], source.text_tokens[t]
        vm, tm = source.video_mask[t], source.text_mask[t]
        pooled = lambda x, m: (x.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True)  # noqa: E731
        save_reference_checkpoint(tmp_path, t + 1, torch.arange(6), torch.arange(6), pooled(video, vm),
                                  pooled(text, tm), video, vm, text, tm)
    traj = load_trajectory(tmp_path, load_tokens=False)
    ids = torch.arange(6)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    for kind, names in (("cls", ["cls"]), ("mean", ["mean", "pooled"])):
        sims = [similarity(*(x.float() if x.dtype == torch.float16 else x for x in traj.checkpoint_tokens(t)), kind=kind)
                for t in range(2)]
        for name in names:
            got = PairScorer(traj, "delta", similarity=name).score_block(ids, ids)
            torch.testing.assert_close(got[off_diagonal], (sims[1] - sims[0])[off_diagonal], atol=2e-3, rtol=0)


def _cache_on_ranks(rank: int, world_size: int, run_dir: str, cache: str) -> np.ndarray:
    from recipe.token_scores import cached_symmetric_scores
    from recipe.trajectory_store import load_trajectory

    traj = load_trajectory(run_dir, load_tokens=False)
    weights, used = pair_selection.score_weights("delta", traj.num_checkpoints)
    scores = cached_symmetric_scores(traj, "delta", weights, used, "token", cache)
    return scores.block(np.arange(traj.num_samples), np.arange(traj.num_samples))


def test_token_score_cache_split_over_two_ranks_equals_one_process(tmp_path, monkeypatch):
    """2 gloo ranks each compute their rows (read lazily from the reference files) and read the other's: the
    same matrix as one process; a second run reuses the cache without computing anything."""
    from recipe import token_scores
    from recipe.trajectory_store import load_trajectory, save_reference_checkpoint
    from tests.distributed import run_on_ranks

    source = _token_trajectory(n=9, k=3, sentence_ids=[0, 1, 1, 2, 3, 4, 4, 5, 6])
    for t in range(3):
        save_reference_checkpoint(tmp_path / "ref", 2 * t + 1, source.sample_ids, source.sentence_ids,
                                  source.video[t].float(), source.text[t].float(), source.video_tokens[t],
                                  source.video_mask[t], source.text_tokens[t], source.text_mask[t])
    cache = tmp_path / "cache"
    per_rank = run_on_ranks(_cache_on_ranks, world_size=2, args=(str(tmp_path / "ref"), str(cache)))
    alone = PairScorer(load_trajectory(tmp_path / "ref"), "delta", "token").symmetric_scores().block(np.arange(9), np.arange(9))
    for matrix in per_rank:
        np.testing.assert_array_equal(matrix, alone)
    (folder,) = cache.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "rows-00000000-00000004.npy",
                                                        "rows-00000004-00000009.npy"]
    monkeypatch.setattr(token_scores, "score_rows", lambda *a, **k: pytest.fail("the complete cache was recomputed"))
    np.testing.assert_array_equal(_cache_on_ranks(0, 1, str(tmp_path / "ref"), str(cache)), alone)


# --- the selection mask --------------------------------------------------------------------------------
def _mask(traj, schedule="linear", keep_fraction=0.5, num_epochs=3):
    return PairSelectionMask(PairScorer(traj), CurriculumSchedule(schedule), num_epochs, keep_fraction)


def test_mask_keeps_a_window_of_the_symmetric_ranking():
    traj = _random_trajectory(16, sentence_ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1, 1])
    local, full = torch.tensor([1, 2, 3, 15]), torch.arange(16)
    scorer = PairScorer(traj)
    symmetric = 0.5 * (scorer.score_block(local, full) + scorer.score_block(full, local).T)
    for epoch, keep_fraction in [(0, 0.5), (1, 0.3), (2, 0.5), (2, 1.0)]:
        mask = _mask(traj, keep_fraction=keep_fraction)
        mask.set_epoch(epoch)
        alpha = epoch / 3  # the paper's e / E
        assert mask.alpha == pytest.approx(alpha)
        keep = mask(local, full)
        assert keep.dtype == torch.bool and keep.shape == (4, 16)
        for row in range(4):
            valid = ~torch.isnan(symmetric[row])
            values = symmetric[row][valid]
            n = int(valid.sum())
            k = max(1, math.ceil(keep_fraction * n))
            start = math.floor(alpha * (n - k) + 0.5)
            window = torch.sort(values).values[start : start + k]
            assert keep[row].sum() == k
            assert torch.equal(torch.sort(symmetric[row][keep[row]]).values, window)
            assert not keep[row][~valid].any()  # the positive and same-sentence pairs are never kept


def test_mask_easy_keeps_low_scores_and_hard_keeps_high_scores():
    traj = _random_trajectory(40)
    local, full = torch.arange(8), torch.arange(40)
    scores = PairScorer(traj).score_block(local, full)
    easy, hard = _mask(traj, "easy", 0.4)(local, full), _mask(traj, "hard", 0.4)(local, full)
    assert (easy & hard).sum() == 0
    assert scores[easy].mean() < scores[hard].mean()


def test_mask_rows_without_negatives_and_at_least_one_kept():
    traj = _random_trajectory(6, sentence_ids=[0, 0, 0, 1, 2, 3])
    keep = _mask(traj, keep_fraction=0.01)(torch.tensor([0, 3]), torch.tensor([0, 1, 2, 3]))
    assert keep[0].sum() == 1 and keep[0, 3]  # one real negative (sample 3): kept although 1% of 1 rounds down
    assert keep[1].sum() == 1 and not keep[1, 3]
    keep = _mask(traj)(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    assert not keep.any()  # every column says the same sentence: nothing to keep


def test_mask_progress_and_validation():
    traj = _random_trajectory(6)
    mask = _mask(traj, "log", num_epochs=11)
    mask.set_progress(1.7)
    assert mask.alpha == 1.0
    mask.set_epoch(0)
    assert mask.alpha == 0.0
    with pytest.raises(ValueError, match="keep_fraction"):
        _mask(traj, keep_fraction=0.0)
