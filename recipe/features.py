"""The tensors that the contrastive stage passes between the model, the all-gather and the loss.

Kept in its own module so the model, the loss and Pair Selection can share the type without
importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ContrastiveFeatures:
    """Token embeddings of a batch of videos and of their sentences, in the shared space.

    Every token vector is L2-normalised; masks are True on real tokens. Pooled similarities
    (CLS, mean) are computed from these by `recipe.similarity`, so one type serves all three kinds.
    """

    video: torch.Tensor  # [B, Lv, E]
    video_mask: torch.Tensor  # bool [B, Lv]
    text: torch.Tensor  # [B, Lt, E]
    text_mask: torch.Tensor  # bool [B, Lt]

    def __post_init__(self) -> None:
        if self.video.shape[:2] != self.video_mask.shape or self.text.shape[:2] != self.text_mask.shape:
            raise ValueError(
                f"feature/mask shapes disagree: video {tuple(self.video.shape)} vs mask "
                f"{tuple(self.video_mask.shape)}, text {tuple(self.text.shape)} vs mask {tuple(self.text_mask.shape)}"
            )
        if self.video.shape[0] != self.text.shape[0]:
            raise ValueError(f"{self.video.shape[0]} videos but {self.text.shape[0]} texts in one batch")

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]
