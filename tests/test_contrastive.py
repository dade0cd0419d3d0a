"""The global-batch contrastive loss: 2 real gloo ranks must reproduce one process on the whole batch.

The reference below is written independently of recipe.contrastive: similarities pair by pair on
unpadded tokens, and cross-entropy row by row over the allowed columns. Gradients are compared the
way DeepSpeed applies them: parameter gradients averaged over ranks.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recipe.contrastive import ContrastiveLoss, contrastive_loss, gather_features
from recipe.features import ContrastiveFeatures
from tests.distributed import run_on_ranks

WORLD = 2
LOCAL_BATCH = 4
IN_DIM, EMBED = 6, 5


# ----------------------------------------------------------------------------- reference similarity
def reference_similarity(video, video_mask, text, text_mask, kind, chunk_size=None):
    """Batched, masked similarity [Bv, Bt] (the definition recipe.similarity implements)."""
    if kind == "cls":
        return video[:, 0] @ text[:, 0].T
    if kind == "mean":
        v = F.normalize((video * video_mask[..., None]).sum(1) / video_mask.sum(1, keepdim=True), dim=-1)
        t = F.normalize((text * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True), dim=-1)
        return v @ t.T
    scores = torch.einsum("ave,bte->abvt", video, text)  # [Bv, Bt, Lv, Lt]
    invalid = ~(video_mask[:, None, :, None] & text_mask[None, :, None, :])
    scores = scores.masked_fill(invalid, float("-inf"))
    best_video = scores.max(dim=2).values  # each text token's best video token: [Bv, Bt, Lt]
    best_text = scores.max(dim=3).values  # each video token's best text token: [Bv, Bt, Lv]
    tm, vm = text_mask[None, :, :], video_mask[:, None, :]
    text_side = torch.where(tm, best_video, 0.0).sum(-1) / tm.sum(-1)
    video_side = torch.where(vm, best_text, 0.0).sum(-1) / vm.sum(-1)
    return (text_side + video_side) / 2


def pair_similarity(video: torch.Tensor, text: torch.Tensor, kind: str) -> torch.Tensor:
    """One pair, unpadded tokens [Lv, E] and [Lt, E]."""
    if kind == "cls":
        return video[0] @ text[0]
    if kind == "mean":
        return F.normalize(video.mean(0), dim=0) @ F.normalize(text.mean(0), dim=0)
    scores = video @ text.T
    return (scores.max(0).values.mean() + scores.max(1).values.mean()) / 2


def every_third_pair(local_ids: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
    """A deterministic selection hook that depends on the ids only (as Pair Selection does)."""
    return (local_ids[:, None] * 7 + global_ids[None, :] * 3) % 4 != 0


# ----------------------------------------------------------------------------- the shared data
def make_samples(seed: int = 0, batch: int = WORLD * LOCAL_BATCH) -> dict:
    """Raw token inputs of varying lengths; rank 0's longest is shorter than rank 1's (padding is exercised)."""
    gen = torch.Generator().manual_seed(seed)
    video_lengths = [2, 5, 3, 4, 6, 2, 7, 3][:batch]
    text_lengths = [3, 1, 4, 2, 2, 6, 3, 5][:batch]
    return {
        "video": [torch.randn(n, IN_DIM, generator=gen) for n in video_lengths],
        "text": [torch.randn(n, IN_DIM, generator=gen) for n in text_lengths],
        # samples 0/2 (same rank) and 1/5 (across ranks) share a sentence
        "sentence_ids": torch.tensor([40, 41, 40, 42, 43, 41, 44, 45][:batch]),
        "sample_ids": torch.tensor([100 + 3 * i for i in range(batch)]),
        "projection": torch.randn(IN_DIM, EMBED, generator=gen),
        "logit_scale": torch.tensor(1.3),
    }


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(s.shape[0] for s in seqs)
    tokens = torch.stack([F.pad(s, (0, 0, 0, length - s.shape[0])) for s in seqs])
    mask = torch.stack([torch.arange(length) < s.shape[0] for s in seqs])
    return tokens, mask


def embed(tokens: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    return F.normalize(tokens @ projection, dim=-1)


CASES = {
    "token": dict(kind="token", same_sentence="mask", selection=None),
    "cls": dict(kind="cls", same_sentence="mask", selection=None),
    "mean": dict(kind="mean", same_sentence="mask", selection=None),
    "token_positive": dict(kind="token", same_sentence="positive", selection=None),
    "token_selection": dict(kind="token", same_sentence="mask", selection=every_third_pair),
    "mean_positive_selection": dict(kind="mean", same_sentence="positive", selection=every_third_pair),
}


# ----------------------------------------------------------------------------- the reference
def reference(samples: dict, kind: str, same_sentence: str, selection) -> dict:
    """One process, the whole batch: loss and gradients of the global mean."""
    video = [v.clone().requires_grad_() for v in samples["video"]]
    text = [t.clone().requires_grad_() for t in samples["text"]]
    projection = samples["projection"].clone().requires_grad_()
    logit_scale = samples["logit_scale"].clone().requires_grad_()
    n = len(video)
    v_emb = [F.normalize(v @ projection, dim=-1) for v in video]
    t_emb = [F.normalize(t @ projection, dim=-1) for t in text]
    sim = torch.stack([torch.stack([pair_similarity(v_emb[i], t_emb[j], kind) for j in range(n)]) for i in range(n)])
    sentence, ids = samples["sentence_ids"], samples["sample_ids"]
    keep = selection(ids, ids) if selection else torch.ones(n, n, dtype=torch.bool)
    row_losses = {}
    for name, matrix in (("v2t", sim), ("t2v", sim.T)):
        losses = []
        for i in range(n):
            same = [j for j in range(n) if sentence[j] == sentence[i] or j == i]
            negatives = [j for j in range(n) if j not in same and keep[i, j]]
            positives = [i] if same_sentence == "mask" else same
            allowed = sorted(set(positives) | set(negatives))
            log_prob = torch.log_softmax(logit_scale.exp() * matrix[i, allowed], dim=0)
            losses.append(-sum(log_prob[allowed.index(j)] for j in positives) / len(positives))
        row_losses[name] = torch.stack(losses)
    loss = (row_losses["v2t"].mean() + row_losses["t2v"].mean()) / 2
    loss.backward()
    return {
        "loss": loss.detach(),
        "rows_v2t": row_losses["v2t"].detach(),
        "rows_t2v": row_losses["t2v"].detach(),
        "grad_video": [v.grad for v in video],
        "grad_text": [t.grad for t in text],
        "grad_projection": projection.grad,
        "grad_logit_scale": logit_scale.grad,
    }


# ----------------------------------------------------------------------------- the distributed run
def _rank_forward_backward(rank: int, samples: dict, case: dict, loss_fn=None) -> dict:
    lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
    video, video_mask = pad(samples["video"][lo:hi])
    text, text_mask = pad(samples["text"][lo:hi])
    video.requires_grad_()
    text.requires_grad_()
    projection = samples["projection"].clone().requires_grad_()
    logit_scale = samples["logit_scale"].clone().requires_grad_()
    features = ContrastiveFeatures(embed(video, projection), video_mask, embed(text, projection), text_mask)
    loss_fn = loss_fn or ContrastiveLoss(case["kind"], case["same_sentence"], similarity_fn=reference_similarity)
    out = loss_fn(features, logit_scale, samples["sample_ids"][lo:hi], samples["sentence_ids"][lo:hi], case["selection"])
    out["loss"].backward()
    return {
        **{k: v.detach() for k, v in out.items()},
        "grad_video": [video.grad[i, : int(video_mask[i].sum())] for i in range(hi - lo)],
        "grad_text": [text.grad[i, : int(text_mask[i].sum())] for i in range(hi - lo)],
        "grad_projection": projection.grad,
        "grad_logit_scale": logit_scale.grad,
    }


def _worker(rank: int, world_size: int, samples: dict) -> dict:
    results = {name: _rank_forward_backward(rank, samples, case) for name, case in CASES.items()}
    # Ranks with different batch sizes must be refused with a clear message, on every rank.
    count = 3 if rank == 0 else 2
    features = ContrastiveFeatures(
        torch.randn(count, 2, EMBED), torch.ones(count, 2, dtype=torch.bool),
        torch.randn(count, 2, EMBED), torch.ones(count, 2, dtype=torch.bool),
    )
    try:
        gather_features(features, torch.arange(count), torch.arange(count))
        results["uneven_error"] = None
    except ValueError as error:
        results["uneven_error"] = str(error)
    # Validity flags travel with the gather (rank 1's last row is padding).
    features = ContrastiveFeatures(torch.randn(2, 2, EMBED), torch.ones(2, 2, dtype=torch.bool),
                                   torch.randn(2, 2, EMBED), torch.ones(2, 2, dtype=torch.bool))
    batch = gather_features(features, torch.arange(2), torch.arange(2), valid=torch.tensor([True, rank == 0]))
    results["valid"] = (batch.local_valid, batch.valid)
    return results


@pytest.fixture(scope="module")
def distributed_results():
    samples = make_samples()
    return samples, run_on_ranks(_worker, world_size=WORLD, args=(samples,))


@pytest.mark.parametrize("case_name", list(CASES))
def test_two_ranks_match_one_process_on_the_concatenated_batch(distributed_results, case_name):
    samples, per_rank = distributed_results
    case = CASES[case_name]
    ref = reference(samples, case["kind"], case["same_sentence"], case["selection"])
    ranks = [r[case_name] for r in per_rank]
    tol = dict(atol=1e-5, rtol=1e-5)
    # Each rank's loss is the mean over its own rows; their average is the global mean.
    for rank, out in enumerate(ranks):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(out["loss_v2t"], ref["rows_v2t"][rows].mean(), **tol)
        torch.testing.assert_close(out["loss_t2v"], ref["rows_t2v"][rows].mean(), **tol)
    torch.testing.assert_close(sum(out["loss"] for out in ranks) / WORLD, ref["loss"], **tol)
    # Replicated parameters: DeepSpeed averages their gradients over ranks.
    for name in ("grad_projection", "grad_logit_scale"):
        torch.testing.assert_close(sum(out[name] for out in ranks) / WORLD, ref[name], **tol)
    # Inputs live on one rank; the all-gather's backward sums every rank's contribution to them,
    # so the owner holds W x the gradient of the global mean (the 1/W comes with the averaging above).
    for name in ("grad_video", "grad_text"):
        dist_grads = [g for out in ranks for g in out[name]]
        for dist_grad, ref_grad in zip(dist_grads, ref[name], strict=True):
            torch.testing.assert_close(dist_grad / WORLD, ref_grad, **tol)
    assert ref["grad_projection"].abs().sum() > 0 and ref["grad_logit_scale"].abs() > 0


def test_selection_reports_the_kept_fraction_on_each_rank(distributed_results):
    samples, per_rank = distributed_results
    ids, sentence = samples["sample_ids"], samples["sentence_ids"]
    keep = every_third_pair(ids, ids)
    negatives = sentence[:, None] != sentence[None, :]
    for rank, out in enumerate(per_rank):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        expected = (keep & negatives)[rows].sum() / negatives[rows].sum()
        torch.testing.assert_close(out["token_selection"]["kept_negative_fraction"], expected.float())
        assert 0 < expected < 1
        assert out["token"]["kept_negative_fraction"] == 1.0


def test_validity_flags_are_gathered(distributed_results):
    _, per_rank = distributed_results
    for rank, out in enumerate(per_rank):
        local, everyone = out["valid"]
        assert local.tolist() == [True, rank == 0] and everyone.tolist() == [True, True, True, False]


def test_uneven_batches_across_ranks_are_refused(distributed_results):
    _, per_rank = distributed_results
    for out in per_rank:
        assert out["uneven_error"] is not None and "[3, 2]" in out["uneven_error"]


# ----------------------------------------------------------------------------- world size 1
def _fixed_similarity(matrix: torch.Tensor):
    """A similarity that returns a given matrix (world 1: both calls see the whole batch)."""
    return lambda video, video_mask, text, text_mask, kind, chunk_size=None: matrix


def _features(batch: int = 4) -> ContrastiveFeatures:
    mask = torch.ones(batch, 2, dtype=torch.bool)
    return ContrastiveFeatures(torch.zeros(batch, 2, 3), mask, torch.zeros(batch, 2, 3), mask)


SENTENCES = torch.tensor([7, 8, 7, 9])  # samples 0 and 2 say the same sentence


def _loss(matrix, same_sentence="mask", selection=None, logit_scale=0.0):
    loss_fn = ContrastiveLoss("token", same_sentence, similarity_fn=_fixed_similarity(matrix))
    return loss_fn(_features(), torch.tensor(logit_scale), torch.arange(4), SENTENCES, selection)


def test_same_sentence_pairs_are_not_negatives():
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    changed = matrix.clone()
    changed[0, 2] = changed[2, 0] = 50.0  # a same-sentence pair: must not matter
    torch.testing.assert_close(_loss(matrix)["loss"], _loss(changed)["loss"])
    changed[0, 1] = 50.0  # a real negative: must matter
    assert not torch.allclose(_loss(matrix)["loss"], _loss(changed)["loss"])
    # by hand, row 0 of v2t: columns 0 (positive), 1, 3
    expected = -torch.log_softmax(matrix[0, [0, 1, 3]], 0)[0]
    rows = [expected] + [
        -torch.log_softmax(matrix[i, cols], 0)[cols.index(i)]
        for i, cols in ((1, [0, 1, 2, 3]), (2, [1, 2, 3]), (3, [0, 1, 2, 3]))
    ]
    torch.testing.assert_close(_loss(matrix)["loss_v2t"], torch.stack(rows).mean())


def test_same_sentence_pairs_as_positives_share_the_target():
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    log_prob = torch.log_softmax(matrix.T, dim=1)  # t2v rows
    rows = [
        -(log_prob[0, 0] + log_prob[0, 2]) / 2,
        -log_prob[1, 1],
        -(log_prob[2, 0] + log_prob[2, 2]) / 2,
        -log_prob[3, 3],
    ]
    torch.testing.assert_close(_loss(matrix, "positive")["loss_t2v"], torch.stack(rows).mean())


def test_same_sentence_masking_off_is_plain_infonce_and_survives_selection():
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(6))
    plain = (F.cross_entropy(matrix, torch.arange(4)) + F.cross_entropy(matrix.T, torch.arange(4))) / 2
    out = _loss(matrix, "negative")
    torch.testing.assert_close(out["loss"], plain)
    assert out["kept_negative_fraction"] == 1.0
    # Pair Selection scores only pairs of different sentences: the twins (0, 2) stay negatives when it drops all
    drop_all = lambda local, full: torch.zeros(len(local), len(full), dtype=torch.bool)  # noqa: E731
    out = _loss(matrix, "negative", selection=drop_all)
    twins_only = torch.stack([-torch.log_softmax(matrix[0, [0, 2]], 0)[0], torch.tensor(0.0),
                              -torch.log_softmax(matrix[2, [0, 2]], 0)[1], torch.tensor(0.0)]).mean()
    torch.testing.assert_close(out["loss_v2t"], twins_only)
    torch.testing.assert_close(out["kept_negative_fraction"], torch.tensor(2 / 12))


def test_selection_never_drops_the_positive():
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    drop_all = lambda local, full: torch.zeros(len(local), len(full), dtype=torch.bool)  # noqa: E731
    out = _loss(matrix, selection=drop_all)
    assert out["loss"] == 0.0  # only the positive is left in every row
    assert out["kept_negative_fraction"] == 0.0
    # with same-sentence positives the twins remain, so rows 0 and 2 still have a loss
    out = _loss(matrix, "positive", selection=drop_all)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0


def test_selection_changes_the_loss_and_the_fraction():
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(4))
    keep_first_columns = lambda local, full: (full < 2)[None, :].expand(len(local), -1).clone()  # noqa: E731
    out = _loss(matrix, selection=keep_first_columns)
    # candidate negatives: 16 pairs - 4 self - 2 same-sentence = 10; those in columns 0 and 1 are
    # (0,1) (1,0) (2,1) (3,0) (3,1) = 5
    negatives = SENTENCES[:, None] != SENTENCES[None, :]
    expected = (negatives & (torch.arange(4) < 2)[None, :]).sum() / negatives.sum()
    assert expected == 0.5
    torch.testing.assert_close(out["kept_negative_fraction"], expected.float())
    assert not torch.allclose(out["loss"], _loss(matrix)["loss"])


def test_temperature_scales_the_logits_and_gets_a_gradient():
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
    logit_scale = torch.tensor(2.0, requires_grad=True)
    loss_fn = ContrastiveLoss("cls", similarity_fn=_fixed_similarity(matrix))
    out = loss_fn(_features(), logit_scale, torch.arange(4), torch.arange(4))
    out["loss"].backward()
    scale = torch.tensor(2.0).exp()
    expected = (F.cross_entropy(matrix * scale, torch.arange(4)) + F.cross_entropy(matrix.T * scale, torch.arange(4))) / 2
    torch.testing.assert_close(out["loss"], expected)
    assert logit_scale.grad is not None and logit_scale.grad != 0


@pytest.mark.parametrize("same_sentence", ["mask", "positive", "negative"])
def test_padding_rows_are_never_negatives_nor_rows_of_the_loss(same_sentence):
    """A batch with a padding row (the loader's valid=False copy of sample 1: same sample and sentence ids) gives
    exactly the loss of the batch without it, in every same-sentence mode. (Broken variant tried: the validity
    flags ignored: under `negative` the copy is a negative of row 1, a clip pushed away from itself, and the
    losses differ in every mode since the copy's own row counts.)"""
    matrix = torch.randn(4, 4, generator=torch.Generator().manual_seed(8))
    matrix[3], matrix[:, 3] = matrix[1], matrix[:, 1]  # the copy's video and text are sample 1's
    matrix[3, 3] = matrix[1, 1]
    sample_ids, sentences = torch.tensor([10, 11, 12, 11]), torch.tensor([7, 8, 7, 8])
    padded = ContrastiveLoss("token", same_sentence, similarity_fn=_fixed_similarity(matrix))(
        _features(4), torch.tensor(0.5), sample_ids, sentences, valid=torch.tensor([True, True, True, False]))
    real = ContrastiveLoss("token", same_sentence, similarity_fn=_fixed_similarity(matrix[:3, :3]))(
        _features(3), torch.tensor(0.5), sample_ids[:3], sentences[:3])
    for key in ("loss", "loss_v2t", "loss_t2v", "kept_negative_fraction"):
        torch.testing.assert_close(padded[key], real[key], rtol=1e-6, atol=1e-7)


def test_world_size_one_gather_is_the_identity():
    features = _features()
    batch = gather_features(features, torch.arange(4), SENTENCES)
    assert batch.features is features and batch.local is features and batch.offset == 0
    assert batch.global_batch_size == batch.local_batch_size == 4


def test_bad_inputs_are_refused():
    matrix = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        _loss(matrix, selection=lambda local, full: torch.ones(len(local), len(full)))
    with pytest.raises(ValueError, match="similarity_kind"):
        ContrastiveLoss("max")
    with pytest.raises(ValueError, match="same_sentence"):
        ContrastiveLoss("token", same_sentence="ignore")
    with pytest.raises(ValueError, match="3 sample ids"):
        gather_features(_features(), torch.arange(3), SENTENCES)


def test_local_loss_function_matches_the_reference_at_world_one():
    """contrastive_loss on a world-1 batch equals the independent reference (token, positive, selection)."""
    samples = make_samples(seed=3)
    ref = reference(samples, "token", "positive", every_third_pair)
    video, video_mask = pad(samples["video"])
    text, text_mask = pad(samples["text"])
    projection = samples["projection"]
    features = ContrastiveFeatures(embed(video, projection), video_mask, embed(text, projection), text_mask)
    batch = gather_features(features, samples["sample_ids"], samples["sentence_ids"])
    out = contrastive_loss(batch, samples["logit_scale"], "token", "positive", every_third_pair,
                           similarity_fn=reference_similarity)
    torch.testing.assert_close(out["loss"], ref["loss"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["token", "cls", "mean"])
def test_project_similarity_agrees_with_this_reference(kind):
    """Cross-check: recipe.similarity implements the same definition the loss tests assume."""
    from recipe import similarity as similarity_module
    samples = make_samples(seed=4)
    video, video_mask = pad(samples["video"])
    text, text_mask = pad(samples["text"])
    video, text = embed(video, samples["projection"]), embed(text, samples["projection"])
    torch.testing.assert_close(
        similarity_module.similarity(video, video_mask, text, text_mask, kind=kind),
        reference_similarity(video, video_mask, text, text_mask, kind),
        atol=1e-5, rtol=1e-5,
    )


def test_kind_and_chunk_size_reach_the_similarity():
    calls = []

    def recording(video, video_mask, text, text_mask, **options):
        calls.append(options)
        return torch.eye(len(video), len(text))

    ContrastiveLoss("mean", chunk_size=3, similarity_fn=recording)(_features(), torch.tensor(0.0), torch.arange(4), SENTENCES)
    ContrastiveLoss("cls", similarity_fn=recording)(_features(), torch.tensor(0.0), torch.arange(4), SENTENCES)
    assert calls == [{"kind": "mean", "chunk_size": 3}] * 2 + [{"kind": "cls"}] * 2
