"""Seeding and RNG state capture/restore, so that a resumed run draws the same random numbers.

Three generators matter in a training process: Python's `random`, NumPy's global generator and
torch's (CPU, plus every CUDA device when there is one). `capture_rng_state()` returns all of
them as one picklable dict; `restore_rng_state()` puts them back. Checkpointing stores one such
dict per rank (each rank has its own dropout / augmentation stream).

Typical use:
    seed_everything(seed)              # same on every rank: identical model initialisation
    ... build the model ...
    seed_everything(seed + rank)       # distinct per-rank streams (dropout, augmentation)

Also here, because it decides what numbers a run computes: `enable_tf32()`, TF32 tensor cores for fp32
matmuls and convolutions on GPUs.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy only accepts 32-bit seeds
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator of this process, as a picklable dict."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back generator states captured by `capture_rng_state`.

    A CUDA state saved on a GPU machine is ignored when restoring on a machine without CUDA
    (and vice versa there is nothing to restore), since there is no generator to put it in.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def enable_tf32() -> None:
    """Let fp32 matmuls and convolutions on a GPU use TF32 tensor cores (Ampere and later).

    PyTorch leaves TF32 off for matmuls by default, so an fp32 config (zero2.json: the default, and what a
    GPU without bf16 runs) gets a fraction of the tensor-core throughput; TF32 keeps fp32's range and ~10
    bits of mantissa, the usual trade for training. bf16 configs are unaffected. The contrastive similarity
    turns it off around itself (recipe.similarity.exact_fp32). Nothing changes on a CPU.
    """
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
