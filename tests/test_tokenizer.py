"""SentencePiece tokenizer training, HF save/load round trip, character level, local mBART tokenizers and their
conventions (mBART-cc25 `pieces </s> lang_code`, mBART-50 `lang_code pieces </s>`)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import MBartTokenizer

from recipe.tokenizer import load_tokenizer, train_tokenizer

PHOENIX = Path(__file__).resolve().parents[2] / "shared" / "data" / "phoenix14t"
CORPUS = [
    "guten abend liebe zuschauer",
    "morgen regnet es im norden und im osten",
    "am tag scheint die sonne im süden",
    "heute nacht wird es kalt",
    "im westen weht ein frischer wind",
] * 3


def test_train_save_load_round_trip(tmp_path):
    tokenizer = train_tokenizer(CORPUS, tmp_path, vocab_size=60)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "sentencepiece.model").is_file()
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_token_id, loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert len(loaded) == len(tokenizer) <= 60
    for text in CORPUS:
        ids = loaded(text).input_ids
        assert ids == tokenizer(text).input_ids
        assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
        assert loaded.decode(ids, skip_special_tokens=True) == text
    batch = loaded(CORPUS[:2], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == loaded.pad_token_id and batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
    assert loaded("qqq xyz").input_ids.count(3) >= 1  # unseen characters become <unk>


def test_character_level_for_chinese(tmp_path):
    sentences = ["今天天气很好", "明天下雨", "北京今天很冷", "上海明天有雨"]
    tokenizer = train_tokenizer(sentences, tmp_path, vocab_size=200, character_level=True)
    loaded = load_tokenizer(tmp_path)
    pieces = loaded.convert_ids_to_tokens(loaded("今天下雨很冷").input_ids)[1:-1]
    assert all(len(p) == 1 for p in pieces), pieces
    assert "".join(p for p in pieces if p != "▁") == "今天下雨很冷"
    assert loaded.decode(loaded("北京明天很好").input_ids, skip_special_tokens=True) == "北京明天很好"
    assert len(tokenizer) == len(set("".join(sentences))) + 4 + 1  # chars + specials + "▁"


def test_empty_training_text_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no non-empty"):
        train_tokenizer(["", "  "], tmp_path, vocab_size=10)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")


def test_loads_a_local_mbart_tokenizer_directory(tmp_path):
    """An mBART tokenizer saved with save_pretrained (what a downloaded mBART dir holds) loads offline."""
    ours = train_tokenizer(CORPUS, tmp_path / "spm", vocab_size=60)
    vocab = [(piece, 0.0) for piece in ours.convert_ids_to_tokens(list(range(len(ours))))]
    mbart = MBartTokenizer(vocab=vocab, src_lang="de_DE", tgt_lang="de_DE")
    mbart.save_pretrained(tmp_path / "mbart")
    loaded = load_tokenizer(tmp_path / "mbart")
    ids = loaded("guten abend").input_ids
    assert ids == mbart("guten abend").input_ids
    assert loaded.convert_ids_to_tokens(ids[-2:]) == ["</s>", "de_DE"]


@pytest.mark.skipif(not PHOENIX.is_dir(), reason=f"real PHOENIX-2014T texts not found at {PHOENIX}")
def test_phoenix_sentences_round_trip(tmp_path):
    def texts(split):
        with open(PHOENIX / f"{split}.tsv", encoding="utf-8") as f:
            return [row["text"] for row in csv.DictReader(f, delimiter="\t")]

    tokenizer = train_tokenizer(texts("train"), tmp_path, vocab_size=1000)
    dev = texts("dev")
    encoded = tokenizer(dev).input_ids
    assert all(tokenizer.decode(ids, skip_special_tokens=True) == text for ids, text in zip(encoded, dev) if 3 not in ids)
    unknown = sum(ids.count(3) for ids in encoded) / sum(len(ids) for ids in encoded)
    assert unknown < 0.01
    assert 900 <= len(tokenizer) <= 1000


# -- real mBART conventions, with tokenizers built here in each layout (tests/mbart_layout.py) -------------------
def _mbart(tmp_path, convention, **languages):
    from tests.mbart_layout import mbart_tokenizer

    return mbart_tokenizer(tmp_path / convention, CORPUS, convention, **languages)


def _hf_shift(labels, pad_id):
    """mBART's own teacher forcing (MBartForConditionalGeneration): the last real label moves to the front."""
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    return shift_tokens_right(labels.masked_fill(labels == -100, pad_id), pad_id)


@pytest.mark.parametrize("convention", ["mbart-cc25", "mbart-50"])
def test_mbart_convention_layout_decoder_start_and_summary(tmp_path, convention):
    """Each real layout is recognised and gives what the model needs: the decoder start token and teacher
    forcing of Hugging Face's own mBART, the token `generate` must force, a summary token that is a language
    code (never a word piece). (Broken variants tried: decoder start fixed to </s> for cc25, which breaks
    the shift equality; forced_bos None for mBART-50.)"""
    from recipe.modeling import shift_labels_right, summary_token_first
    from recipe.text import tokenize_targets
    from recipe.tokenizer import detect_convention

    tokenizer = _mbart(tmp_path, convention, src_lang="en_XX", tgt_lang="de_DE")
    en, de, eos = tokenizer.convert_tokens_to_ids("en_XX"), tokenizer.convert_tokens_to_ids("de_DE"), tokenizer.eos_token_id
    found = detect_convention(tokenizer)
    assert (found.name, found.src_lang, found.tgt_lang) == (convention, "en_XX", "de_DE")
    texts = ["guten abend liebe zuschauer", "heute nacht wird es kalt im osten"]
    text = tokenize_targets(tokenizer, texts, max_tokens=64)
    lengths = text.mask.sum(1)
    labels = [row[row != -100].tolist() for row in text.labels]
    ids = [row[: n].tolist() for row, n in zip(text.ids, lengths)]
    pieces = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    if convention == "mbart-cc25":  # pieces </s> lang_code, source and target alike
        assert ids == [p + [eos, en] for p in pieces] and labels == [p + [eos, de] for p in pieces]
        assert (found.decoder_start_token_id, found.forced_bos_token_id, found.text_summary) == (de, None, "last")
    else:  # lang_code pieces </s>
        assert ids == [[en] + p + [eos] for p in pieces] and labels == [[de] + p + [eos] for p in pieces]
        assert (found.decoder_start_token_id, found.forced_bos_token_id, found.text_summary) == (eos, de, "first")
    shifted = shift_labels_right(text.labels, tokenizer.pad_token_id, found.decoder_start_token_id)
    assert torch.equal(shifted, _hf_shift(text.labels, tokenizer.pad_token_id))
    # The summary token the `cls` similarity reads is the source language code, whatever the sentence length.
    first = summary_token_first(text.ids[..., None], text.mask)[..., 0] if found.text_summary == "last" else text.ids
    assert first[:, 0].tolist() == [en, en]
    # Language codes and </s> never reach the decoded text.
    assert tokenizer.batch_decode(text.labels.clamp(min=tokenizer.pad_token_id), skip_special_tokens=True) == texts


def test_ours_is_the_sentencepiece_convention(tmp_path):
    from recipe.tokenizer import detect_convention

    found = detect_convention(train_tokenizer(CORPUS, tmp_path, vocab_size=60))
    assert (found.name, found.decoder_start_token_id, found.forced_bos_token_id, found.text_summary) == (
        "sentencepiece", 2, None, "first")


@pytest.mark.parametrize("convention", ["mbart-cc25", "mbart-50"])
def test_languages_are_checked_defaulted_and_saved_with_the_run(tmp_path, convention):
    """--src-lang/--tgt-lang: an unknown code is refused (the tokenizer itself would silently use <unk>),
    one defaults to the other, none falls back to the directory's; the saved run tokenizer keeps them."""
    from recipe.tokenizer import detect_convention, set_languages

    tokenizer = _mbart(tmp_path, convention, src_lang="fr_XX", tgt_lang="fr_XX")
    with pytest.raises(ValueError, match="'xx_YY' is not a language code"):
        set_languages(tokenizer, tgt_lang="xx_YY")
    set_languages(tokenizer)  # nothing given: the directory's own
    assert (tokenizer.src_lang, tokenizer.tgt_lang) == ("fr_XX", "fr_XX")
    set_languages(tokenizer, tgt_lang="de_DE")
    assert (tokenizer.src_lang, tokenizer.tgt_lang) == ("de_DE", "de_DE")
    tokenizer.save_pretrained(tmp_path / "run-tokenizer")
    reloaded = load_tokenizer(tmp_path / "run-tokenizer")
    assert detect_convention(reloaded) == detect_convention(tokenizer)
    assert reloaded("guten abend").input_ids == tokenizer("guten abend").input_ids
    with pytest.raises(ValueError, match="no language codes"):
        set_languages(train_tokenizer(CORPUS, tmp_path / "ours", vocab_size=60), tgt_lang="de_DE")
    unnamed = tmp_path / "unnamed"
    tokenizer.save_pretrained(unnamed)
    config = json.loads((unnamed / "tokenizer_config.json").read_text())
    config.pop("src_lang"), config.pop("tgt_lang")
    (unnamed / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="give --tgt-lang"):
        set_languages(load_tokenizer(unnamed))
