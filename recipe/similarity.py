"""Video-text similarity for a block of [videos x texts], three kinds, with bounded memory.

* "token" (paper default, CiCo-style late interaction): for a pair (video i, text j) the token
  similarity matrix S = v_i t_j^T is masked to real tokens; every video token takes its best text token
  and those maxima are averaged over the video's real tokens (video->text), likewise text->video, and the
  two directions are averaged.
* "cls": dot product of token 0 of each side (the sign encoder's summary token; the text's first token).
* "mean": dot product of the L2-normalised masked means of the token embeddings.

Inputs are the L2-normalised token embeddings of `ContrastiveFeatures` (`normalize_tokens`). Token
similarity over a global batch of N videos and N texts would need an [N,N,Lv,Lt] tensor; it is computed in
[chunk_size x chunk_size] pair blocks instead, so peak memory is chunk_size^2 * Lv * Lt whatever N is.

Precision: normalisation and similarity run in true fp32 whatever the model computes in. bf16 keeps 8
significant bits, so a similarity near 1 is rounded to steps of 2^-8..2^-7; the logit scale (up to 100)
turns that into errors of up to ~0.4 logit, and the Pair Selection trajectories are recorded from these
same features. So the features are normalised in fp32 (`normalize_tokens`), and `similarity` computes in
fp32 with autocast off and TF32 off for its matmuls (TF32 keeps 11 bits: the same problem, smaller).
tests/test_bf16.py bounds the loss difference to fp32 and shows the bf16 path outside that bound.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def normalize_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fp32 unit vectors [B, L, E] from token embeddings in any precision; padding tokens are exact zeros
    (so gathers that pad further across ranks look the same)."""
    unit = F.normalize(tokens.to(torch.promote_types(tokens.dtype, torch.float32)), dim=-1)
    return unit * mask[..., None].to(unit.dtype)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 matmuls stay fp32 inside: no autocast to half precision, no TF32 (see the module docstring)."""
    previous = torch.backends.cuda.matmul.allow_tf32  # the flag recipe.seeding.enable_tf32 turns on
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous

SIMILARITY_KINDS = ("token", "cls", "mean")


def similarity(
    video: torch.Tensor,
    video_mask: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    kind: str = "token",
    chunk_size: int = 64,
) -> torch.Tensor:
    """Similarities [Bv, Bt] between every video (rows) and every text (columns)."""
    if video.shape[:2] != video_mask.shape or text.shape[:2] != text_mask.shape:
        raise ValueError(
            f"token/mask shapes disagree: video {tuple(video.shape)} vs {tuple(video_mask.shape)}, "
            f"text {tuple(text.shape)} vs {tuple(text_mask.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(video.dtype, text.dtype), torch.float32)  # fp32, or fp64 if given
    with exact_fp32(video.device):
        return _similarity(video.to(dtype), video_mask.bool(), text.to(dtype), text_mask.bool(), kind, chunk_size)


def _similarity(video, video_mask, text, text_mask, kind: str, chunk_size: int) -> torch.Tensor:
    if kind == "cls":
        return video[:, 0] @ text[:, 0].T
    if kind == "mean":
        return _masked_mean(video, video_mask) @ _masked_mean(text, text_mask).T
    if kind == "token":
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        rows = []
        for v0 in range(0, video.shape[0], chunk_size):
            v, vm = video[v0 : v0 + chunk_size], video_mask[v0 : v0 + chunk_size]
            cols = [
                _token_block(v, vm, text[t0 : t0 + chunk_size], text_mask[t0 : t0 + chunk_size])
                for t0 in range(0, text.shape[0], chunk_size)
            ]
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)
    raise ValueError(f"unknown similarity kind {kind!r}; choose one of {SIMILARITY_KINDS}")


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype)[..., None]
    mean = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return F.normalize(mean, dim=-1)


def _token_block(video: torch.Tensor, video_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Late interaction for a [bv x bt] block of pairs."""
    sims = torch.einsum("ale,bme->ablm", video, text)  # [bv, bt, Lv, Lt]
    pair_mask = video_mask[:, None, :, None] & text_mask[None, :, None, :]
    sims = sims.masked_fill(~pair_mask, torch.finfo(sims.dtype).min)
    video_to_text = _masked_average(sims.amax(dim=3), video_mask[:, None, :])  # best text token per video token
    text_to_video = _masked_average(sims.amax(dim=2), text_mask[None, :, :])  # best video token per text token
    return (video_to_text + text_to_video) / 2


def _masked_average(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(values.dtype)
    # Masked positions hold finfo.min; multiplying by 0 would not clear them, so select instead.
    values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return (values * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)
