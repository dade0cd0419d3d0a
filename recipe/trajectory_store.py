"""Reference checkpoints of the similarity trajectory: writing them during the reference run, reading them back.

A reference run (ordinary random negatives) embeds the whole training set after its first epoch and
then every k epochs (`recipe.pretrain`, `--record-trajectory-every k`) and calls
`save_reference_checkpoint`, which writes one file per checkpoint:

    RUN/trajectories/ref-{epoch:04d}.safetensors

holding, per training sample, the sample and sentence ids (int64) and, L2-normalised in float32 and then
stored as fp16: a pooled (masked-mean) video and text vector, the first ("CLS") token of each side, and,
optionally, the token embeddings and masks (fp16 / bool) for token-level (CiCo) scoring. Storage is O(N)
per checkpoint; Pair Selection computes similarities from it (`recipe.pair_selection`).

`load_trajectory(RUN)` reads every checkpoint, orders them by epoch, sorts the samples by id and checks
that all checkpoints describe the same samples with the same sentences. Token embeddings are the bulk of a
checkpoint (N x (Lv + Lt) x E): with `load_tokens=False` they stay on disk and `Trajectory.checkpoint_tokens(t)`
reads one checkpoint's at a time.
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
MIN_REFERENCE_CHECKPOINTS = 3
"""A Pair Selection run refuses a reference with fewer checkpoints: two points are a difference, not a trajectory."""
_FILE_RE = re.compile(r"^ref-(\d+)\.safetensors$")
_TOKEN_KEYS = ("video_tokens", "video_mask", "text_tokens", "text_mask")
_CLS_KEYS = ("video_cls", "text_cls")


def reference_checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / TRAJECTORY_DIR / f"ref-{epoch:04d}.safetensors"


def is_reference_epoch(finished_epochs: int, every: int) -> bool:
    """Whether a reference checkpoint is recorded after `finished_epochs` epochs when recording every k = `every`.

    After the first epoch, then after epochs k, 2k, 3k, ...: the trajectory's first point is the earliest
    one that reflects training (at step 0 the visual side is a random network whose similarities say nothing
    about the data, so delta = s_last - s_first would mostly measure the initialisation), and the paper's
    k-epoch spacing follows.
    """
    return every > 0 and finished_epochs >= 1 and (finished_epochs == 1 or finished_epochs % every == 0)


def reference_epochs(every: int, count: int) -> list[int]:
    """The first `count` epochs (1-based finished-epoch counts) after which a reference checkpoint is recorded."""
    if every < 1 or count < 1:
        raise ValueError(f"need every >= 1 and count >= 1, got {every} and {count}")
    epochs, epoch = [], 0
    while len(epochs) < count:
        epoch += 1
        if is_reference_epoch(epoch, every):
            epochs.append(epoch)
    return epochs


def _as_tensor(value, dtype: torch.dtype) -> torch.Tensor:
    tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    # clone: safetensors refuses two entries that share memory (e.g. one tensor passed as two id columns)
    return tensor.to(dtype).contiguous().clone()


def _normalised_fp16(x) -> torch.Tensor:
    """L2-normalise in float32, then store as fp16: the stored vectors are unit length to fp16 precision
    whatever precision the model ran in (zero padding tokens stay zero)."""
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return torch.nn.functional.normalize(x.float(), dim=-1).half().contiguous()


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
    video_cls=None,
    text_cls=None,
) -> Path:
    """Write one reference checkpoint atomically (temporary file, then `os.replace`) and return its path.

    Shapes: sample_ids / sentence_ids [N]; video_pooled / text_pooled [N, E] (normalised here);
    video_tokens [N, Lv, E] with video_mask bool [N, Lv]; text_tokens [N, Lt, E] with text_mask bool [N, Lt];
    video_cls / text_cls [N, E]. Token tensors are optional but come as a complete set (all four or none);
    the CLS vectors are optional (both or none) and default to token 0 when tokens are given.
    """
    tensors = {
        "sample_ids": _as_tensor(sample_ids, torch.int64),
        "sentence_ids": _as_tensor(sentence_ids, torch.int64),
        "video": _normalised_fp16(video_pooled),
        "text": _normalised_fp16(text_pooled),
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
            tokens = _normalised_fp16(token_args[f"{side}_tokens"])
            mask = _as_tensor(token_args[f"{side}_mask"], torch.bool)
            if tokens.dim() != 3 or tokens.shape[0] != n or mask.shape != tokens.shape[:2]:
                raise ValueError(
                    f"{side}_tokens must be [N={n}, L, E] with {side}_mask [N, L]; got "
                    f"{tuple(tokens.shape)} and {tuple(mask.shape)}"
                )
            tensors[f"{side}_tokens"], tensors[f"{side}_mask"] = tokens, mask
    if (video_cls is None) != (text_cls is None):
        raise ValueError("give both video_cls and text_cls, or neither")
    if video_cls is None and given:
        video_cls, text_cls = tensors["video_tokens"][:, 0], tensors["text_tokens"][:, 0]
    if video_cls is not None:
        tensors["video_cls"], tensors["text_cls"] = _normalised_fp16(video_cls), _normalised_fp16(text_cls)
        if tensors["video_cls"].shape != tensors["video"].shape or tensors["text_cls"].shape != tensors["text"].shape:
            raise ValueError(f"video_cls and text_cls must be [N={n}, E] like the pooled vectors, got "
                             f"{tuple(tensors['video_cls'].shape)} and {tuple(tensors['text_cls'].shape)}")

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
    reference checkpoint t (taken after epoch `epochs[t]`). `video_cls` / `text_cls` likewise hold the first
    token of each side (None when the checkpoints did not store it). Token tensors are loaded only on request
    (`load_trajectory(load_tokens=True)`), padded to the longest checkpoint (padding masked out); otherwise
    `checkpoint_tokens(t)` reads them from disk one checkpoint at a time.
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
    video_cls: torch.Tensor | None = None  # fp16 [K, N, E]
    text_cls: torch.Tensor | None = None  # fp16 [K, N, E]
    tokens_on_disk: bool = False
    """Every checkpoint file stores token embeddings (readable with checkpoint_tokens even when not loaded)."""
    orders: list[torch.Tensor] | None = None
    """Per checkpoint file, the permutation that sorts its rows by sample id (for reads from disk)."""

    @property
    def num_checkpoints(self) -> int:
        return len(self.epochs)

    @property
    def num_samples(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def has_tokens(self) -> bool:
        return self.video_tokens is not None or self.tokens_on_disk

    @property
    def has_cls(self) -> bool:
        return self.video_cls is not None or self.has_tokens

    def checkpoint_tokens(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(video_tokens [N, Lv, E] fp16, video_mask [N, Lv], text_tokens [N, Lt, E], text_mask [N, Lt]) of
        checkpoint t, rows in sample-id order: from memory when loaded, else read from its file."""
        if self.video_tokens is not None:
            return self.video_tokens[t], self.video_mask[t], self.text_tokens[t], self.text_mask[t]
        if not self.tokens_on_disk or self.orders is None:
            raise ValueError(f"the reference checkpoints under {self.paths[0].parent} store no token embeddings: "
                             "record the reference run with --similarity token")
        with safe_open(str(self.paths[t]), framework="pt") as f:
            order = self.orders[t]
            return tuple(f.get_tensor(key)[order] for key in _TOKEN_KEYS)  # type: ignore[return-value]

    def cls_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(video_cls, text_cls), fp16 [K, N, E]: stored ones, else token 0 of the stored tokens."""
        if self.video_cls is not None:
            return self.video_cls, self.text_cls
        if self.video_tokens is not None:
            return self.video_tokens[:, :, 0], self.text_tokens[:, :, 0]
        if not self.tokens_on_disk:
            raise ValueError(f"the reference checkpoints under {self.paths[0].parent} store neither CLS vectors nor "
                             "token embeddings: CLS scores need a reference recorded by this version of the recipe")
        video, text = [], []
        for path, order in zip(self.paths, self.orders):
            with safe_open(str(path), framework="pt") as f:  # slices: only token 0 is read
                video.append(f.get_slice("video_tokens")[:, 0][order])
                text.append(f.get_slice("text_tokens")[:, 0][order])
        return torch.stack(video), torch.stack(text)

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
    video, text, orders = [], [], []
    cls: dict[str, list[torch.Tensor]] = {k: [] for k in _CLS_KEYS}
    tokens: dict[str, list[torch.Tensor]] = {k: [] for k in _TOKEN_KEYS}
    all_have_tokens, any_has_tokens, all_have_cls = True, False, True
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
            orders.append(order)
            video.append(f.get_tensor("video")[order])
            text.append(f.get_tensor("text")[order])
            all_have_cls &= set(_CLS_KEYS) <= keys
            if all_have_cls:
                for k in _CLS_KEYS:
                    cls[k].append(f.get_tensor(k)[order])
            has_tokens = set(_TOKEN_KEYS) <= keys
            all_have_tokens &= has_tokens
            any_has_tokens |= has_tokens
            if load_tokens and all_have_tokens:
                for k in _TOKEN_KEYS:
                    tokens[k].append(f.get_tensor(k)[order])
    if video[0].shape[1] != text[0].shape[1] or any(v.shape != video[0].shape for v in video + text):
        raise ValueError(f"pooled embedding shapes differ between checkpoints in {paths[0].parent}")
    if any_has_tokens and not all_have_tokens:
        log.warning("not every reference checkpoint under %s stores token embeddings: token scores unavailable", paths[0].parent)
    traj = Trajectory(epochs, sample_ids, sentence_ids, torch.stack(video), torch.stack(text), paths,
                      tokens_on_disk=all_have_tokens, orders=orders)
    if all_have_cls:
        traj.video_cls, traj.text_cls = torch.stack(cls["video_cls"]), torch.stack(cls["text_cls"])
    if load_tokens and all_have_tokens:
        traj.video_tokens, traj.video_mask = _pad_tokens(tokens["video_tokens"], tokens["video_mask"])
        traj.text_tokens, traj.text_mask = _pad_tokens(tokens["text_tokens"], tokens["text_mask"])
    return traj


def require_reference_checkpoints(trajectory: Trajectory, minimum: int = MIN_REFERENCE_CHECKPOINTS) -> None:
    """Refuse a reference too short for Pair Selection, naming what it has and how to record more."""
    if trajectory.num_checkpoints < minimum:
        raise ValueError(
            f"{trajectory.paths[0].parent}: {trajectory.num_checkpoints} reference checkpoint(s) (after epochs "
            f"{trajectory.epochs}); Pair Selection needs at least {minimum}, a trajectory rather than one difference. "
            "Record the reference run longer or more often: it records after epoch 1 and then every k epochs "
            "(--record-trajectory-every k; the paper uses k = 5 over a reference run as long as stage 1), so it "
            f"needs at least {reference_epochs(5, minimum)[-1]} epochs at k = 5, {reference_epochs(2, minimum)[-1]} "
            f"at k = 2, {minimum} at k = 1"
        )
