"""Which attention kernel each transformer of the model uses: one module decides, everything else asks it.

Three transformers run attention: the visual encoder (over visual tokens), the text encoder and the decoder
(causal self-attention over the sentence, cross-attention to the visual tokens). The rules:

* `flash_attention_2` only where it is correct and possible: a CUDA device, the flash-attn package (an
  optional extra: it builds only against a CUDA torch, see ENVIRONMENT.md) and half precision (bf16 or fp16;
  flash-attn has no fp32 kernel, so an fp32 run with flash crashes at its first forward). Otherwise
  PyTorch's `sdpa`, which runs everywhere and agrees with the reference `eager` path (tests/test_model.py).
* Never flash in the decoder. transformers (5.23-5.24) unpads a padded batch for flash with
  `_upad_input`: when the query length differs from the key length, it takes the query's mask as the LAST
  `query_length` columns of the key mask (it assumes left padding of one shared sequence). In
  cross-attention the keys are the visual tokens, so teacher-forced decoder queries get a slice of the
  *video* mask: whole sentences are dropped or misaligned, and the loss and gradients are wrong, while
  beam search (query length 1, a separate branch) looks fine. tests/test_attention.py runs that function
  on CPU to show it. The decoder's sequences are short (tens of tokens), so sdpa costs little there.
* The encoders may use flash: their queries and keys are the same padded sequence (query length = key
  length), for which the unpadding is exact.
"""
from __future__ import annotations

import torch
from transformers.utils import is_flash_attn_2_available

FLASH_ATTENTION = "flash_attention_2"
FALLBACK = "sdpa"
HALF_PRECISIONS = (torch.bfloat16, torch.float16)


def is_flash(implementation: str | None) -> bool:
    """Any flash flavour (flash_attention_2/3, kernels-community/...): transformers' own test is the name."""
    return implementation is not None and "flash" in implementation


def choose_attn_implementation(dtype: torch.dtype = torch.float32) -> str:
    """The kernel for the encoders: flash when CUDA, flash-attn and a half-precision `dtype` all hold, else sdpa.

    `dtype` is the precision the model computes in (the DeepSpeed config's: bf16/fp16 or fp32).
    """
    if dtype in HALF_PRECISIONS and torch.cuda.is_available() and is_flash_attn_2_available():
        return FLASH_ATTENTION
    return FALLBACK


def decoder_attn_implementation(implementation: str | None) -> str | None:
    """The decoder's kernel for a model-wide choice: never flash (see the module docstring), else unchanged."""
    return FALLBACK if is_flash(implementation) else implementation


def attention_kernels(model: torch.nn.Module) -> dict[str, str]:
    """Which kernel each transformer of a `SignTranslationModel` runs, as its config says (what forward reads)."""
    return {
        "visual_encoder": model.sign_encoder.transformer.config._attn_implementation,
        "text_encoder": model.text_encoder.config._attn_implementation,
        "decoder": model.decoder.config._attn_implementation,
    }
