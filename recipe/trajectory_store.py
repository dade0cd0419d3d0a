"""Reference checkpoints of the similarity trajectory: writing them during the reference run, reading them back.

A reference run (ordinary random negatives) embeds the whole training set every k epochs and calls
`save_reference_checkpoint`, which writes one file per checkpoint:

    RUN/trajectories/ref-{epoch:04d}.safetensors

holding, per training sample, an L2-normalised pooled video vector and pooled text vector (fp16),
the sample and sentence ids (int64) and, optionally, the token embeddings and masks (fp16 / bool) for
token-level (CiCo) scoring. Storage is O(N) per checkpoint: the N x N similarities are never stored,
Pair Selection computes them blockwise on demand (`recipe.pair_selection.PairScorer`).

`load_trajectory(RUN)` reads every checkpoint, orders them by epoch, sorts the samples by id and checks
that all checkpoints describe the same samples with the same sentences.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

TRAJECTORY_DIR = "trajectories"
FORMAT_TAG = "scl-slt-trajectory-v1"
_FILE_RE = re.compile(r"^ref-(\d+)\.safetensors$")
_TOKEN_KEYS = ("video_tokens", "video_mask", "text_tokens", "text_mask")


def reference_checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / TRAJECTORY_DIR / f"ref-{epoch:04d}.safetensors"


def _as_tensor(value, dtype: torch.dtype) -> torch.Tensor:
    tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    # clone: safetensors refuses two entries that share memory (e.g. one tensor passed as two id columns)
    return tensor.to(dtype).contiguous().clone()


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    # Normalise in fp32 before the fp16 cast so that the stored vectors are unit length to fp16 precision.
    return torch.nn.functional.normalize(x.float(), dim=-1)


def save_reference_checkpoint(
    run_dir: str | os.PathLike,
    epoch: int,
    sample_ids,
    sentence_ids,
    video_pooled,
    text_pooled,
    video_tokens=None,
    video_mask=None,
    text_tokens=None,
    text_mask=None,
) -> Path:
    """Write one reference checkpoint atomically (temporary file, then `os.replace`) and return its path.

    Shapes: sample_ids / sentence_ids [N]; video_pooled / text_pooled [N, E] (normalised here);
    video_tokens [N, Lv, E] with video_mask bool [N, Lv]; text_tokens [N, Lt, E] with text_mask bool [N, Lt].
    The token tensors are optional but come as a complete set (all four or none).
    """
    tensors = {
        "sample_ids": _as_tensor(sample_ids, torch.int64),
        "sentence_ids": _as_tensor(sentence_ids, torch.int64),
        "video": _l2_normalise(_as_tensor(video_pooled, torch.float32)).half(),
        "text": _l2_normalise(_as_tensor(text_pooled, torch.float32)).half(),
    }
    n = tensors["sample_ids"].shape[0]
    if tensors["sample_ids"].dim() != 1 or tensors["sentence_ids"].shape != (n,):
        raise ValueError(
            f"sample_ids and sentence_ids must both be 1-D of the same length, got "
            f"{tuple(tensors['sample_ids'].shape)} and {tuple(tensors['sentence_ids'].shape)}"
        )
    if tensors["video"].dim() != 2 or tensors["video"].shape != tensors["text"].shape or tensors["video"].shape[0] != n:
        raise ValueError(
            f"video_pooled and text_pooled must be [N={n}, E] each, got {tuple(tensors['video'].shape)} "
            f"and {tuple(tensors['text'].shape)}"
        )
    if torch.unique(tensors["sample_ids"]).numel() != n:
        raise ValueError("sample_ids hold duplicates: embed each training sample exactly once per checkpoint")

    token_args = dict(zip(_TOKEN_KEYS, (video_tokens, video_mask, text_tokens, text_mask)))
    given = [k for k, v in token_args.items() if v is not None]
    if given and len(given) != len(_TOKEN_KEYS):
        raise ValueError(f"token embeddings need all of {_TOKEN_KEYS}; got only {given}")
    if given:
        for side in ("video", "text"):
            tokens = _as_tensor(token_args[f"{side}_tokens"], torch.float16)
            mask = _as_tensor(token_args[f"{side}_mask"], torch.bool)
            if tokens.dim() != 3 or tokens.shape[0] != n or mask.shape != tokens.shape[:2]:
                raise ValueError(
                    f"{side}_tokens must be [N={n}, L, E] with {side}_mask [N, L]; got "
                    f"{tuple(tokens.shape)} and {tuple(mask.shape)}"
                )
            tensors[f"{side}_tokens"], tensors[f"{side}_mask"] = tokens, mask

    path = reference_checkpoint_path(run_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT_TAG, "epoch": str(int(epoch))})
    os.replace(tmp, path)  # readers never see a half-written checkpoint
    return path


@dataclass
class Trajectory:
    """All reference checkpoints of one run, ordered by epoch, samples sorted by id.

    `video[t, n]` / `text[t, n]` are the pooled, L2-normalised embeddings of sample `sample_ids[n]` at
    reference checkpoint t (taken at epoch `epochs[t]`). Token tensors are None unless every checkpoint
    stored them; token lengths are padded to the longest checkpoint (padding masked out).
    """

    epochs: list[int]
    sample_ids: torch.Tensor  # int64 [N], strictly increasing
    sentence_ids: torch.Tensor  # int64 [N]
    video: torch.Tensor  # fp16 [K, N, E]
    text: torch.Tensor  # fp16 [K, N, E]
    paths: list[Path]
    video_tokens: torch.Tensor | None = None  # fp16 [K, N, Lv, E]
    video_mask: torch.Tensor | None = None  # bool [K, N, Lv]
    text_tokens: torch.Tensor | None = None  # fp16 [K, N, Lt, E]
    text_mask: torch.Tensor | None = None  # bool [K, N, Lt]

    @property
    def num_checkpoints(self) -> int:
        return len(self.epochs)

    @property
    def num_samples(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def has_tokens(self) -> bool:
        return self.video_tokens is not None

    def positions(self, ids) -> torch.Tensor:
        """Row positions of the given sample ids (any shape); a clear error for ids the run never embedded."""
        ids = torch.as_tensor(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids), dtype=torch.int64)
        pos = torch.searchsorted(self.sample_ids, ids).clamp_(max=self.num_samples - 1)
        unknown = self.sample_ids[pos] != ids
        if unknown.any():
            missing = ids[unknown].unique()[:5].tolist()
            raise KeyError(
                f"sample ids {missing} are not in the reference trajectory ({self.paths[0].parent}): "
                "the reference run must have been trained on the same training split"
            )
        return pos

    def pair_similarities(self, video_ids, text_ids, chunk: int = 16384) -> torch.Tensor:
        """Pooled cosine trajectories of the element-wise pairs (video of video_ids[n], text of text_ids[n]):
        float32 [K, n] over all checkpoints, nothing masked (for analysis; scores live in recipe.pair_selection)."""
        rows, cols = self.positions(video_ids).view(-1), self.positions(text_ids).view(-1)
        if rows.shape != cols.shape:
            raise ValueError(f"{rows.numel()} video ids but {cols.numel()} text ids")
        parts = [
            (self.video[:, rows[i : i + chunk]].float() * self.text[:, cols[i : i + chunk]].float()).sum(-1)
            for i in range(0, rows.numel(), chunk)
        ]
        return torch.cat(parts, dim=1) if parts else torch.zeros((self.num_checkpoints, 0))


def _pad_tokens(parts: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(p.shape[1] for p in parts)
    tokens = torch.zeros((len(parts), parts[0].shape[0], length, parts[0].shape[2]), dtype=torch.float16)
    mask = torch.zeros((len(parts), parts[0].shape[0], length), dtype=torch.bool)
    for t, (p, m) in enumerate(zip(parts, masks)):
        tokens[t, :, : p.shape[1]] = p
        mask[t, :, : m.shape[1]] = m
    return tokens, mask


def list_reference_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / TRAJECTORY_DIR
    found = []
    for path in folder.glob("ref-*.safetensors") if folder.is_dir() else []:
        match = _FILE_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_trajectory(run_dir: str | os.PathLike, load_tokens: bool = True) -> Trajectory:
    """Read every `RUN/trajectories/ref-*.safetensors`, ordered by epoch, validated against each other."""
    found = list_reference_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(
            f"no reference checkpoints (ref-EPOCH.safetensors) under {Path(run_dir) / TRAJECTORY_DIR}: train the "
            "reference run with --negatives random --record-trajectory-every K"
        )
    epochs, paths = [e for e, _ in found], [p for _, p in found]
    sample_ids = sentence_ids = None
    video, text = [], []
    tokens: dict[str, list[torch.Tensor]] = {k: [] for k in _TOKEN_KEYS}
    all_have_tokens, any_has_tokens = True, False
    for epoch, path in found:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = {"sample_ids", "sentence_ids", "video", "text"} - keys
            if missing:
                raise ValueError(f"{path}: not a reference checkpoint (missing {sorted(missing)}); delete or rewrite it")
            ids = f.get_tensor("sample_ids")
            order = torch.argsort(ids)
            ids = ids[order]
            sents = f.get_tensor("sentence_ids")[order]
            if sample_ids is None:
                sample_ids, sentence_ids = ids, sents
            elif not torch.equal(ids, sample_ids):
                raise ValueError(
                    f"{path} holds {ids.numel()} sample ids that differ from {paths[0]} ({sample_ids.numel()}): all "
                    "reference checkpoints of a run must embed the same training samples; remove the stray file"
                )
            elif not torch.equal(sents, sentence_ids):
                raise ValueError(f"{path}: sentence ids differ from {paths[0]} for the same samples; the data changed")
            video.append(f.get_tensor("video")[order])
            text.append(f.get_tensor("text")[order])
            has_tokens = set(_TOKEN_KEYS) <= keys
            all_have_tokens &= has_tokens
            any_has_tokens |= has_tokens
            if load_tokens and all_have_tokens:
                for k in _TOKEN_KEYS:
                    tokens[k].append(f.get_tensor(k)[order])
    if video[0].shape[1] != text[0].shape[1] or any(v.shape != video[0].shape for v in video + text):
        raise ValueError(f"pooled embedding shapes differ between checkpoints in {paths[0].parent}")
    if load_tokens and any_has_tokens and not all_have_tokens:
        log.warning("not every reference checkpoint under %s stores token embeddings: token scores unavailable", paths[0].parent)
    traj = Trajectory(epochs, sample_ids, sentence_ids, torch.stack(video), torch.stack(text), paths)
    if load_tokens and all_have_tokens:
        traj.video_tokens, traj.video_mask = _pad_tokens(tokens["video_tokens"], tokens["video_mask"])
        traj.text_tokens, traj.text_mask = _pad_tokens(tokens["text_tokens"], tokens["text_mask"])
    return traj
