"""Which attention kernel each transformer gets, per precision and device, proven on CPU.

flash-attn cannot be installed without a CUDA torch, so these tests check the dispatch itself (the configs
each module's attention reads) with CUDA and flash-attn availability faked, and run transformers' own
unpadding function (pure torch) to show why the decoder must never get flash.

Broken variants tried, each caught here: `choose_attn_implementation` ignoring the dtype (flash for fp32:
test_choose_attn_implementation); the decoder built from the shared text config (flash in cross-attention:
test_the_decoder_never_gets_flash, test_set_attn_implementation_keeps_the_decoder_off_flash); the override of
`set_attn_implementation` removed (same); `model_config_for` without the ds_config's precision
(test_the_training_precision_decides).
"""
from __future__ import annotations

import pytest
import torch
import transformers.modeling_utils
from transformers.modeling_flash_attention_utils import _unpad_input, _upad_input
from transformers.modeling_utils import PreTrainedModel

import recipe.attention
from recipe.attention import (FLASH_ATTENTION, attention_kernels, choose_attn_implementation,
                              decoder_attn_implementation)
from recipe.modeling import SignTranslationModel
from recipe.presets import build_config

VOCAB = 40
REPO_CONFIGS = "ds_configs"


@pytest.fixture
def flash_on_cuda(monkeypatch):
    """A machine with CUDA and flash-attn, as far as the dispatch can tell (the kernels never run here)."""
    monkeypatch.setattr(recipe.attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(recipe.attention, "is_flash_attn_2_available", lambda: True)
    # transformers refuses to build a flash model without the package; the dispatch is what is under test.
    monkeypatch.setattr(PreTrainedModel, "_flash_attn_can_dispatch", lambda self, *a, **k: True)
    monkeypatch.setattr(transformers.modeling_utils, "lazy_import_flash_attention", lambda *a, **k: None)


@pytest.mark.parametrize("cuda, flash, dtype, expected", [
    (False, False, torch.bfloat16, "sdpa"),
    (False, True, torch.bfloat16, "sdpa"),       # flash-attn installed but no GPU
    (True, False, torch.bfloat16, "sdpa"),       # GPU without flash-attn
    (True, True, torch.float32, "sdpa"),         # fp32 run on a flash machine: flash has no fp32 kernel
    (True, True, torch.bfloat16, FLASH_ATTENTION),
    (True, True, torch.float16, FLASH_ATTENTION),
])
def test_choose_attn_implementation(monkeypatch, cuda, flash, dtype, expected):
    monkeypatch.setattr(recipe.attention.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(recipe.attention, "is_flash_attn_2_available", lambda: flash)
    assert choose_attn_implementation(dtype) == expected


def test_the_default_is_fp32_so_never_flash(flash_on_cuda):
    """Callers that do not say their precision (benchmarks, tests, build_config) get sdpa, not a crash."""
    assert choose_attn_implementation() == "sdpa"
    assert build_config("tiny", vocab_size=VOCAB)._attn_implementation == "sdpa"
    assert build_config("tiny", vocab_size=VOCAB, attn_implementation="eager")._attn_implementation == "eager"


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flash_attention_3", "kernels-community/flash-attn"])
def test_decoder_rule(implementation):
    assert decoder_attn_implementation(implementation) == "sdpa"
    assert decoder_attn_implementation("eager") == "eager" and decoder_attn_implementation("sdpa") == "sdpa"


def test_the_decoder_never_gets_flash(flash_on_cuda):
    model = SignTranslationModel(build_config("tiny", vocab_size=VOCAB, attn_implementation=FLASH_ATTENTION))
    assert attention_kernels(model) == {"visual_encoder": FLASH_ATTENTION, "text_encoder": FLASH_ATTENTION,
                                        "decoder": "sdpa"}
    # Self- and cross-attention of every decoder layer read this one config.
    layer = model.decoder.layers[0]
    assert layer.self_attn.config is model.decoder.config and layer.encoder_attn.config is model.decoder.config


def test_set_attn_implementation_keeps_the_decoder_off_flash(flash_on_cuda):
    """transformers' switch (also what from_pretrained(attn_implementation=...) leads to) reaches every
    sub-model; the decoder must come back to sdpa."""
    model = SignTranslationModel(build_config("tiny", vocab_size=VOCAB, attn_implementation="sdpa"))
    model.set_attn_implementation(FLASH_ATTENTION)
    assert attention_kernels(model) == {"visual_encoder": FLASH_ATTENTION, "text_encoder": FLASH_ATTENTION,
                                        "decoder": "sdpa"}
    model.set_attn_implementation("eager")
    assert set(attention_kernels(model).values()) == {"eager"}


class FakeTokenizer:
    """What model_config_for reads of a tokenizer: its size, special ids and layout (<s> pieces </s>)."""

    pad_token_id, bos_token_id, eos_token_id = 1, 0, 2

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, text: str, text_target: str) -> dict:
        return {"input_ids": [0, 5, 2], "labels": [0, 5, 2]}


@pytest.mark.parametrize("ds_config, expected", [("zero2.json", "sdpa"), ("zero3_offload.json", "sdpa"),
                                                 ("zero2_bf16.json", FLASH_ATTENTION),
                                                 ("zero3_bf16.json", FLASH_ATTENTION)])
def test_the_training_precision_decides(flash_on_cuda, ds_config, expected):
    """The run's model config follows its DeepSpeed config: fp32 configs never get flash (the default
    `make demo` / benchmark configs on a flash machine used to crash at the first forward)."""
    from recipe.build import model_config_for
    from recipe.config import PretrainConfig

    config = PretrainConfig(data="d", out="o", deepspeed_config=f"{REPO_CONFIGS}/{ds_config}")
    model_config = model_config_for(config, FakeTokenizer(), label_smoothing=0.0)
    assert model_config._attn_implementation == expected
    assert model_config.decoder_mbart_config()._attn_implementation == "sdpa"
    assert model_config.visual_mbart_config()._attn_implementation == expected


def test_why_flash_is_wrong_in_cross_attention():
    """transformers' flash unpadding, run on CPU: with queries shorter than the keys (teacher-forced decoder
    queries against visual tokens) the queries are unpadded with the LAST columns of the key (video) mask.

    Clip 0 has 3 real visual tokens of 8 (right padding), clip 1 all 8; both sentences have 4 real tokens.
    Correct cross-attention keeps all 4 queries of each sentence; the flash path keeps 0 of sentence 0 (the
    last 4 video columns are padding) and all of sentence 1. If transformers fixes this, this test fails and
    the decoder may be allowed flash again (recipe/attention.py).
    """
    batch, video_len, text_len, heads, dim = 2, 8, 4, 2, 4
    video_mask = torch.zeros(batch, video_len, dtype=torch.bool)
    video_mask[0, :3] = True
    video_mask[1, :] = True
    query = torch.randn(batch, text_len, heads, dim)
    key = value = torch.randn(batch, video_len, heads, dim)
    _, _, _, _, (cu_seqlens_q, cu_seqlens_k), _ = _upad_input(query, key, value, video_mask, text_len, _unpad_input)
    queries_kept = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    assert (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist() == [3, 8]  # keys: right
    assert queries_kept == [0, 4]  # queries: sentence 0 lost entirely, where the right answer is [4, 4]


def test_flash_is_right_when_queries_and_keys_are_one_sequence():
    """The encoders' case (self-attention over one padded sequence): the unpadding keeps exactly the real tokens."""
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    states = torch.randn(2, 5, 2, 4)
    _, _, _, indices_q, (cu_seqlens_q, _), _ = _upad_input(states, states, states, mask, 5, _unpad_input)
    assert (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist() == [3, 5]
    assert indices_q.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]


def test_eager_and_sdpa_agree_with_a_sentence_longer_than_the_video():
    """The decoder's sdpa cross-attention against eager when the text is longer than the visual tokens
    (the case where the flash slice of the key mask does not even fit)."""
    torch.manual_seed(0)
    overrides = dict(dropout=0.0, lora_dropout=0.0)
    eager = SignTranslationModel(build_config("tiny", vocab_size=VOCAB, attn_implementation="eager", **overrides)).eval()
    sdpa = SignTranslationModel(build_config("tiny", vocab_size=VOCAB, attn_implementation="sdpa", **overrides)).eval()
    sdpa.load_state_dict(eager.state_dict())
    frames = torch.randn(2, 8, 3, 32, 32)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False  # 1 + 1 visual tokens vs 1 + 2
    labels = torch.tensor([[0, 5, 9, 12, 7, 6, 5, 2], [0, 7, 7, 30, 21, 3, 2, -100]])
    torch.testing.assert_close(eager(frames, mask, labels=labels).logits, sdpa(frames, mask, labels=labels).logits,
                               rtol=1e-4, atol=1e-5)
