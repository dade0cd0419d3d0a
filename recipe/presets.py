"""Named model sizes: tiny (CPU tests, demo), base (one GPU), large (the paper's ResNet-18 + mBART-large-50).

`build_config(preset, vocab_size, **overrides)` returns a `SignTranslationConfig`; any field can be
overridden by keyword (unknown names are an error, so a typo cannot pass silently).
"""
from __future__ import annotations

from dataclasses import fields

from recipe.attention import choose_attn_implementation
from recipe.modeling import SignTranslationConfig

MBART_LARGE_50_VOCAB_SIZE = 250054

PRESETS: dict[str, dict] = {
    "tiny": dict(
        frame_cnn="small",
        small_cnn_channels=[16, 32, 64, 128],
        subtract_clip_mean=True,  # a CNN from scratch on few clips: see sign_encoder.subtract_clip_mean
        frame_size=64,
        d_model=128,
        projection_dim=128,
        visual_layers=2,
        visual_attention_heads=4,
        visual_ffn_dim=256,
        max_visual_tokens=256,
        text_encoder_layers=2,
        decoder_layers=2,
        text_attention_heads=4,
        text_ffn_dim=256,
        max_position_embeddings=256,
    ),
    "base": dict(
        frame_cnn="resnet18",
        frame_size=224,
        d_model=512,
        projection_dim=512,
        visual_layers=6,
        visual_attention_heads=8,
        visual_ffn_dim=2048,
        max_visual_tokens=512,
        text_encoder_layers=6,
        decoder_layers=6,
        text_attention_heads=8,
        text_ffn_dim=2048,
        max_position_embeddings=512,
    ),
    # mBART-large-50 dimensions, so `--init-mbart` loads its weights unchanged (or vocabulary-trimmed).
    "large": dict(
        frame_cnn="resnet18",
        frame_size=224,
        d_model=1024,
        projection_dim=1024,
        visual_layers=12,
        visual_attention_heads=16,
        visual_ffn_dim=4096,
        max_visual_tokens=1024,
        text_encoder_layers=12,
        decoder_layers=12,
        text_attention_heads=16,
        text_ffn_dim=4096,
        max_position_embeddings=1024,
    ),
}


def build_config(
    preset: str, vocab_size: int | None = None, attn_implementation: str | None = None, **overrides
) -> SignTranslationConfig:
    """The config of a preset. `vocab_size` = the tokenizer's size (large defaults to mBART-large-50's).

    `attn_implementation` defaults to `choose_attn_implementation()` (flash-attn on CUDA when installed).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if vocab_size is None:
        if preset != "large":
            raise ValueError(f"preset {preset!r} needs vocab_size (the tokenizer's len())")
        vocab_size = MBART_LARGE_50_VOCAB_SIZE
    known = {f.name for f in fields(SignTranslationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config fields {unknown} for preset {preset!r}")
    return SignTranslationConfig(
        **{**PRESETS[preset], "vocab_size": vocab_size, **overrides},
        attn_implementation=attn_implementation or choose_attn_implementation(),
    )
