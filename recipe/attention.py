"""Which attention kernel the transformer layers use: one helper decides, everything else asks it.

flash-attn only builds against a CUDA torch (see ENVIRONMENT.md), so it is an optional extra. We use
`flash_attention_2` only when a GPU is present AND the package imports; otherwise PyTorch's `sdpa`,
which runs everywhere and agrees with the reference `eager` path (tested in tests/test_model.py).
"""
from __future__ import annotations

import torch
from transformers.utils import is_flash_attn_2_available


def choose_attn_implementation() -> str:
    """Return "flash_attention_2" when CUDA and flash-attn are both available, else "sdpa"."""
    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"
