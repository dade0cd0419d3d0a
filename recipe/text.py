"""Sentences -> token tensors for the text encoder (contrastive branch) and the decoder (labels).

The text encoder reads a sentence as the tokenizer encodes a source (mBART: with the source language
code), the decoder learns it as the tokenizer encodes a target (with the target language code); with our
own SentencePiece tokenizer, or when the two languages are the same, both are the same ids. The layouts
are listed in `recipe.tokenizer`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenizedText:
    ids: torch.Tensor  # int64 [B, L]: the sentence as the text encoder reads it (special tokens included), padded
    mask: torch.Tensor  # bool [B, L]
    labels: torch.Tensor  # int64 [B, L']: the sentence as the decoder learns it, padding = -100 (ignored)

    def to(self, device: torch.device | str) -> "TokenizedText":
        return TokenizedText(self.ids.to(device), self.mask.to(device), self.labels.to(device))


def tokenize_targets(tokenizer, texts: list[str], max_tokens: int) -> TokenizedText:
    """Tokenize target sentences for both branches, truncated to `max_tokens` with the special tokens kept
    (so a long sentence still ends with </s> and teaches the model to stop)."""
    texts = list(texts)
    encoded = tokenizer(texts, text_target=texts, add_special_tokens=True, truncation=True, max_length=max_tokens,
                        padding="longest", return_tensors="pt")
    # The target side is padded by the tokenizer too; its pad positions are exactly its pad ids only when no
    # real token is <pad>, which holds: <pad> is never produced by encoding text.
    labels = encoded["labels"].long()
    labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
    return TokenizedText(ids=encoded["input_ids"].long(), mask=encoded["attention_mask"].bool(), labels=labels)
