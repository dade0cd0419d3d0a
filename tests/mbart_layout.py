"""Small mBART checkpoints and tokenizers with the real special-token layouts, built on disk (nothing downloaded).

A real mBART directory holds `sentencepiece.bpe.model` (a SentencePiece model with SentencePiece's own ids:
<unk>=0, <s>=1, </s>=2), a tokenizer config naming the class, and the model. Hugging Face's tokenizer classes
then lay the vocabulary out the fairseq way: <s>=0, <pad>=1, </s>=2, <unk>=3, the pieces shifted by one,
the language codes after them (25 in mBART-cc25, 52 in mBART-50) and <mask> last. These builders do the
same with a SentencePiece model trained here on the test's sentences:

    tokenizer = mbart_tokenizer(directory, texts, MBART_50, src_lang="de_DE")   # MBart50Tokenizer
    model = mbart_checkpoint(directory, tokenizer)                              # tiny MBartForConditionalGeneration
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import AutoTokenizer, MBartConfig, MBartForConditionalGeneration

from recipe.tokenizer import MBART_50, MBART_CC25

TOKENIZER_CLASSES = {MBART_CC25: "MBartTokenizer", MBART_50: "MBart50Tokenizer"}


def train_sentencepiece(texts: list[str], vocab_size: int) -> bytes:
    """A SentencePiece unigram model with SentencePiece's default special ids, as mBART's is."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   hard_vocab_limit=False, character_coverage=1.0, num_threads=1, minloglevel=2)
    return model.getvalue()


def mbart_tokenizer(directory: Path, texts: list[str], convention: str, src_lang: str = "de_DE",
                    tgt_lang: str = "de_DE", vocab_size: int = 120):
    """An mBART-cc25 (MBartTokenizer) or mBART-50 (MBart50Tokenizer) tokenizer directory, loaded back.

    The directory first holds only what a downloaded mBART holds (the SentencePiece file and the config);
    the Hugging Face class converts it on load, then `save_pretrained` adds its tokenizer.json.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sentencepiece.bpe.model").write_bytes(train_sentencepiece(texts, vocab_size))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": TOKENIZER_CLASSES[convention], "src_lang": src_lang, "tgt_lang": tgt_lang}))
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    assert type(tokenizer).__name__ == TOKENIZER_CLASSES[convention]
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def mbart_checkpoint(directory: Path, tokenizer, d_model: int = 32, encoder_layers: int = 2, decoder_layers: int = 2,
                     heads: int = 2, ffn_dim: int = 64, max_positions: int = 64, seed: int = 0):
    """A tiny random MBartForConditionalGeneration with the tokenizer's vocabulary and mBART's special ids,
    saved as a pretrained one is (config, safetensors, generation config)."""
    config = MBartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_positions, scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=2, dropout=0.0,
    )
    torch.manual_seed(seed)
    model = MBartForConditionalGeneration(config)
    with torch.no_grad():
        model.final_logits_bias.normal_()  # non-zero, so copying it is actually checked
    model.save_pretrained(directory)
    return model
