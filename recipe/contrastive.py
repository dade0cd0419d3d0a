"""Symmetric video-text contrastive loss over the global batch, with a negative-selection hook.

Two explicit steps, so the loss is a pure function of tensors and testable at world size 1:

1. `gather_features` collects every rank's token features (with autograd: gradients flow back to
   the rank that produced them), masks, sample ids and sentence ids. Token dims are padded to the
   global max first; the similarity ignores padded tokens through the masks.
2. `contrastive_loss` scores this rank's rows against all gathered columns, open_clip's "local loss":
   v2t = local videos x global texts, t2v = local texts x global videos, the positive of local row i
   at global column offset + i. Each direction is the mean cross-entropy over the local rows.

Why the mean over local rows is right: DeepSpeed averages gradients over data-parallel ranks, and the
all-gather's backward sums the column gradients from every rank back to their owner, so the update is
the gradient of (1/W) sum_r loss_r = the mean over the whole global batch (ranks hold equal batches).

Negatives:
- Two samples of the same sentence are never each other's negatives: `same_sentence="mask"` removes
  the pair (logit -inf), `"positive"` makes every same-sentence column a positive (uniform target).
  `"negative"` turns this off (plain InfoNCE as in GFSLT-VLP, the ablation): another signer's video of
  the same sentence is a negative like any other, and stays one whatever the selection hook says, since
  Pair Selection only scores pairs of different sentences.
- A selection hook (Pair Selection) says which remaining negatives to KEEP, per (local sample, global
  sample) pair; the decision applies to both directions (video i vs text j, and text i vs video j).
  The positive is never dropped. `kept_negative_fraction` reports kept / candidate negatives on this rank.
- Padding rows (`valid=False`: the loader's copies of a real row, standing in for a sample it had to skip)
  take no part: never a negative, never a positive of any row, and their own rows add nothing to the loss
  (each direction is the mean over this rank's valid rows). A copy shares its original's sample and sentence
  ids, so under `same_sentence="negative"` it would otherwise push a clip away from itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from recipe.features import ContrastiveFeatures

SelectionHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(local_sample_ids [b], global_sample_ids [G]) -> bool [b, G]: True = keep that negative pair."""

SimilarityFn = Callable[..., torch.Tensor]
"""similarity(video, video_mask, text, text_mask, kind=..., chunk_size=...) -> [Bv, Bt]."""

SIMILARITY_KINDS = ("token", "cls", "mean")
SAME_SENTENCE_MODES = ("mask", "positive", "negative")


@dataclass
class GatheredBatch:
    """This rank's batch and the global batch it is contrasted against."""

    local: ContrastiveFeatures
    """This rank's features as the model produced them (unpadded, with their autograd graph)."""
    local_sample_ids: torch.Tensor
    local_sentence_ids: torch.Tensor
    features: ContrastiveFeatures
    """All ranks' features in rank order, token dims padded to the global max; differentiable."""
    sample_ids: torch.Tensor
    sentence_ids: torch.Tensor
    offset: int
    """Global index of this rank's first sample (rank x local batch size)."""
    host_sample_ids: torch.Tensor | None = None
    """`sample_ids` on the CPU (for a selection hook that looks them up on the host)."""
    host_local_sample_ids: torch.Tensor | None = None
    """`local_sample_ids` on the CPU; None = `host_sample_ids` (world size 1)."""
    local_valid: torch.Tensor | None = None
    """bool [b]: False on padding rows; None = every row is real."""
    valid: torch.Tensor | None = None
    """bool [G]: the same for the global batch."""

    @property
    def local_batch_size(self) -> int:
        return self.local.batch_size

    @property
    def global_batch_size(self) -> int:
        return self.features.batch_size


def _pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - tokens.shape[1]
    if extra == 0:
        return tokens, mask
    return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def _all_gather(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0; differentiable (backward = reduce-scatter of the sum).

    Not the "gather without grad, then put the local slice back" trick: that drops the gradients that
    other ranks' losses send to this rank's features and is wrong under mean reduction.
    torch >= 2.13 names the differentiable functional gather `all_gather_single`; before that rename (the
    supported torch 2.11/2.12) the autograd variant is `all_gather_tensor_autograd` (torch >= 2.4).
    """
    from torch.distributed import _functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor_autograd
    return funcol.wait_tensor(gather(tensor.contiguous(), 0, group or dist.group.WORLD))


def _host_side_group(group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """The gloo group for this gather's host-side exchanges; None if there is none (then the device gathers)."""
    from recipe.dist import host_group

    if group is not None:  # a subgroup: usable on the host only if it is gloo itself
        return group if dist.get_backend(group) == "gloo" else None
    return host_group()


def _gather_host(tensor: torch.Tensor, group: dist.ProcessGroup | None, device: torch.device) -> torch.Tensor:
    """All-gather a small CPU tensor (shapes, ids) along dim 0 and return it on the CPU.

    Over the gloo host group the host reads the result without waiting for the GPU. Without one (an NCCL
    subgroup was passed), the gather runs on `device` and reading it synchronises, as before.
    """
    host = _host_side_group(group)
    if host is not None:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(host))]
        dist.all_gather(parts, tensor, group=host)
        return torch.cat(parts)
    return _all_gather(tensor.to(device), group).cpu()


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without making the host wait (pinned source, asynchronous copy)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _host_ids(ids: torch.Tensor | list) -> torch.Tensor:
    """Sample or sentence ids as a flat CPU long tensor (they come from the batch, on the host)."""
    ids = torch.as_tensor(ids)
    if ids.device.type != "cpu":  # a caller that moved them to the device: one copy back (a sync)
        ids = ids.cpu()
    return ids.long().view(-1)


def gather_features(
    features: ContrastiveFeatures,
    sample_ids: torch.Tensor,
    sentence_ids: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    valid: torch.Tensor | None = None,
) -> GatheredBatch:
    """All-gather features (with autograd), masks, ids and validity; identity without a multi-rank process group.

    Shapes, ids and validity flags travel between hosts (`_gather_host`), token features and masks between
    devices, so nothing here makes the host wait for the GPU. `sample_ids`/`sentence_ids`/`valid` may be given
    on the CPU (best: they come from the batch) or on the device.
    """
    device = features.video.device
    host_sample_ids, host_sentence_ids = _host_ids(sample_ids), _host_ids(sentence_ids)
    if host_sample_ids.numel() != features.batch_size or host_sentence_ids.numel() != features.batch_size:
        raise ValueError(
            f"{features.batch_size} samples but {host_sample_ids.numel()} sample ids and "
            f"{host_sentence_ids.numel()} sentence ids"
        )
    given = valid is not None  # without flags every row is real (and the loss is a plain mean over rows)
    host_valid = torch.ones(features.batch_size, dtype=torch.bool) if not given else _host_ids(valid).bool()
    if host_valid.numel() != features.batch_size:
        raise ValueError(f"{features.batch_size} samples but {host_valid.numel()} validity flags")
    if features.video.shape[-1] != features.text.shape[-1]:
        raise ValueError(f"video dim {features.video.shape[-1]} != text dim {features.text.shape[-1]}")
    sample_ids, sentence_ids = _to_device(host_sample_ids, device), _to_device(host_sentence_ids, device)
    valid = _to_device(host_valid, device)
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return GatheredBatch(features, sample_ids, sentence_ids, features, sample_ids, sentence_ids, offset=0,
                             host_sample_ids=host_sample_ids, local_valid=valid if given else None, valid=valid)

    rank = dist.get_rank(group)
    batch, video_len, text_len = features.batch_size, features.video.shape[1], features.text.shape[1]
    sizes = _gather_host(torch.tensor([[batch, video_len, text_len]]), group, device)
    if (sizes[:, 0] != batch).any():
        raise ValueError(
            f"ranks hold different batch sizes {sizes[:, 0].tolist()}: the global contrastive loss needs "
            "equal micro-batches on every rank (pad with repeated samples marked valid=False)"
        )
    max_video, max_text = int(sizes[:, 1].max()), int(sizes[:, 2].max())
    video, video_mask = _pad_tokens(features.video, features.video_mask, max_video)
    text, text_mask = _pad_tokens(features.text, features.text_mask, max_text)

    # One collective for both token tensors, one for both masks, one (host side) for ids and validity.
    tokens = _all_gather(torch.cat([video, text], dim=1), group)
    with torch.no_grad():
        masks = _all_gather(torch.cat([video_mask, text_mask], dim=1).to(torch.uint8), group).bool()
    ids = _gather_host(torch.stack([host_sample_ids, host_sentence_ids, host_valid.long()], dim=1), group, device)
    device_ids = _to_device(ids, device)
    gathered = ContrastiveFeatures(
        video=tokens[:, :max_video],
        video_mask=masks[:, :max_video],
        text=tokens[:, max_video:],
        text_mask=masks[:, max_video:],
    )
    return GatheredBatch(
        local=features,
        local_sample_ids=sample_ids,
        local_sentence_ids=sentence_ids,
        features=gathered,
        sample_ids=device_ids[:, 0],
        sentence_ids=device_ids[:, 1],
        offset=rank * batch,
        host_sample_ids=ids[:, 0],
        host_local_sample_ids=host_sample_ids,
        local_valid=valid if given else None,
        valid=device_ids[:, 2].bool(),
    )


def _default_similarity() -> SimilarityFn:
    from recipe.similarity import similarity  # imported late: the loss is testable without the model code

    return similarity


def contrastive_loss(
    batch: GatheredBatch,
    logit_scale: torch.Tensor,
    similarity_kind: str = "token",
    same_sentence: str = "mask",
    selection: SelectionHook | None = None,
    chunk_size: int | None = None,
    similarity_fn: SimilarityFn | None = None,
) -> dict[str, torch.Tensor]:
    """Loss of this rank's rows against the global batch; see the module docstring.

    Returns loss = (loss_v2t + loss_t2v) / 2, both directions, and kept_negative_fraction (detached).
    `logit_scale` is the log of the inverse temperature (the caller clamps it).
    """
    if similarity_kind not in SIMILARITY_KINDS:
        raise ValueError(f"similarity_kind must be one of {SIMILARITY_KINDS}, got {similarity_kind!r}")
    if same_sentence not in SAME_SENTENCE_MODES:
        raise ValueError(f"same_sentence must be one of {SAME_SENTENCE_MODES}, got {same_sentence!r}")
    similarity_fn = similarity_fn or _default_similarity()
    options = {"kind": similarity_kind} if chunk_size is None else {"kind": similarity_kind, "chunk_size": chunk_size}
    local, full = batch.local, batch.features
    sim_v2t = similarity_fn(local.video, local.video_mask, full.text, full.text_mask, **options)  # [b, G]
    sim_t2v = similarity_fn(full.video, full.video_mask, local.text, local.text_mask, **options).T  # [b, G]

    rows = torch.arange(batch.local_batch_size, device=sim_v2t.device)
    positive_column = batch.offset + rows
    real_column = (torch.ones(batch.global_batch_size, dtype=torch.bool, device=sim_v2t.device) if batch.valid is None
                   else batch.valid.to(sim_v2t.device))
    real_row = None if batch.local_valid is None else batch.local_valid.to(sim_v2t.device)
    # Padding columns are nothing to anyone: not negatives, not twins, not positives.
    same = (batch.local_sentence_ids[:, None] == batch.sentence_ids[None, :]) & real_column[None, :]
    same[rows, positive_column] = True  # each row's own positive (a padding row's too; its loss is dropped below)
    negatives = ~same & real_column[None, :]
    keep = negatives
    twins = same.clone()  # other samples of the row's sentence
    twins[rows, positive_column] = False
    if selection is not None:
        # The hook gets host ids when there are (Pair Selection looks scores up on the CPU: a device copy of
        # the ids would make it wait for the GPU); its answer is copied over without waiting.
        local_ids = batch.host_local_sample_ids if batch.host_local_sample_ids is not None else batch.host_sample_ids
        if local_ids is not None and batch.host_sample_ids is not None:
            chosen = selection(local_ids, batch.host_sample_ids)
            chosen = _to_device(chosen, same.device) if isinstance(chosen, torch.Tensor) else chosen
        else:
            chosen = selection(batch.local_sample_ids, batch.sample_ids)
        if not isinstance(chosen, torch.Tensor) or chosen.dtype != torch.bool or chosen.shape != same.shape:
            raise ValueError(
                f"selection hook must return a bool tensor of shape {tuple(same.shape)} (local x global), got "
                f"{getattr(chosen, 'dtype', type(chosen))} {tuple(getattr(chosen, 'shape', ()))}"
            )
        keep = negatives & chosen.to(same.device)
    if same_sentence == "negative":
        negatives, keep = negatives | twins, keep | twins

    if same_sentence in ("mask", "negative"):
        allowed = keep.clone()
        allowed[rows, positive_column] = True
        target = positive_column
    else:
        allowed = keep | same
        target = same.float() / same.sum(dim=1, keepdim=True)

    scale = logit_scale.float().exp()
    loss_v2t = _cross_entropy(scale * sim_v2t.float(), allowed, target, real_row)
    loss_t2v = _cross_entropy(scale * sim_t2v.float(), allowed, target, real_row)
    counted = torch.ones_like(real_column[: len(rows)]) if real_row is None else real_row
    candidates = (negatives & counted[:, None]).sum()
    # No candidate negatives at all (every sample of the global batch says the same sentence): nothing was
    # dropped. torch.where, not a Python `if` on a device tensor (that would wait for the GPU every step).
    fraction = torch.where(candidates > 0, (keep & counted[:, None]).sum() / candidates.clamp_min(1),
                           torch.ones((), device=same.device))
    return {
        "loss": (loss_v2t + loss_t2v) / 2,
        "loss_v2t": loss_v2t,
        "loss_t2v": loss_t2v,
        "kept_negative_fraction": fraction.float().detach(),
    }


def _cross_entropy(logits: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor,
                   rows: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy over the rows marked in `rows` (None: all); columns outside `allowed` take no part
    (logit -inf). `target` is either the column index of the single positive, or a probability row
    (multi-positive). Without a single real row the loss is 0, still attached to the logits (every rank must
    run its backward), and no host synchronisation decides which case applies.
    """
    logits = logits.masked_fill(~allowed, float("-inf"))
    if target.dtype == torch.long:
        per_row = F.cross_entropy(logits, target, reduction="none")
    else:
        # Zero the -inf log-probabilities of excluded columns (their target is 0) so 0 * -inf never makes NaN.
        log_prob = F.log_softmax(logits, dim=1).masked_fill(~allowed, 0.0)
        per_row = -(target * log_prob).sum(dim=1)
    if rows is None:
        return per_row.mean()
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp(min=1)


@dataclass
class ContrastiveLoss:
    """Gather + loss in one call: `loss_fn(features, logit_scale, sample_ids, sentence_ids, selection)`."""

    similarity_kind: str = "token"
    """token (CiCo late interaction), cls or mean; see `recipe.similarity`."""
    same_sentence: str = "mask"
    """What two samples of one sentence are to each other: "mask" (not negatives), "positive", or "negative"
    (the ablation: masking off)."""
    chunk_size: int | None = None
    """Passed to the similarity to bound its memory; None = its default."""
    similarity_fn: SimilarityFn | None = None
    """Injectable for tests; None = `recipe.similarity.similarity`."""

    def __post_init__(self) -> None:
        if self.similarity_kind not in SIMILARITY_KINDS:
            raise ValueError(f"similarity_kind must be one of {SIMILARITY_KINDS}, got {self.similarity_kind!r}")
        if self.same_sentence not in SAME_SENTENCE_MODES:
            raise ValueError(f"same_sentence must be one of {SAME_SENTENCE_MODES}, got {self.same_sentence!r}")

    def __call__(
        self,
        features: ContrastiveFeatures,
        logit_scale: torch.Tensor,
        sample_ids: torch.Tensor,
        sentence_ids: torch.Tensor,
        selection: SelectionHook | None = None,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        batch = gather_features(features, sample_ids, sentence_ids, valid=valid)
        return contrastive_loss(
            batch,
            logit_scale,
            similarity_kind=self.similarity_kind,
            same_sentence=self.same_sentence,
            selection=selection,
            chunk_size=self.chunk_size,
            similarity_fn=self.similarity_fn,
        )
