"""Sentences -> token tensors for the text encoder (contrastive branch) and the decoder (labels)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenizedText:
    ids: torch.Tensor  # int64 [B, L]: sentence tokens + </s>, padded
    mask: torch.Tensor  # bool [B, L]
    labels: torch.Tensor  # int64 [B, L]: ids with padding set to -100 (ignored by the loss)

    def to(self, device: torch.device | str) -> "TokenizedText":
        return TokenizedText(self.ids.to(device), self.mask.to(device), self.labels.to(device))


def tokenize_targets(tokenizer, texts: list[str], max_tokens: int) -> TokenizedText:
    """Tokenize target sentences the way the decoder is trained on them: tokens then </s>, truncated to
    `max_tokens` (keeping </s>, so a long sentence still teaches the model to stop)."""
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens,
                        padding="longest", return_tensors="pt")
    ids = encoded["input_ids"].long()
    mask = encoded["attention_mask"].bool()
    labels = ids.masked_fill(~mask, -100)
    return TokenizedText(ids=ids, mask=mask, labels=labels)
