"""SentencePiece tokenizer training, HF save/load round trip, character level, local mBART tokenizers."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
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
