"""Local mBART directories: loading their weights into the sign model, and trimming their vocabulary."""
from __future__ import annotations

import torch
from transformers import MBartConfig, MBartForConditionalGeneration

from recipe.modeling import SignTranslationModel
from recipe.presets import build_config
from recipe.sign_encoder import VisualEncoderOutput
from recipe.tokenizer import load_tokenizer, train_tokenizer
from recipe.vocab_trim import main as vocab_trim_main

CORPUS = [
    "guten abend liebe zuschauer",
    "morgen regnet es im norden und im osten",
    "am tag scheint die sonne im süden",
    "heute nacht wird es kalt",
    "im westen weht ein frischer wind",
]
# Sentences the trimmed vocabulary is asked to cover: a subset of the tokenizer's training text.
TRIM_TEXTS = ["guten abend liebe zuschauer", "heute nacht wird es kalt"]


def make_mbart_dir(tmp_path, vocab_size=80):
    """A small random mBART saved exactly as a pretrained one would be: config, safetensors, tokenizer."""
    directory = tmp_path / "mbart"
    tokenizer = train_tokenizer(CORPUS * 4, directory, vocab_size)
    config = MBartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, scale_embedding=True, decoder_start_token_id=2,
    )
    torch.manual_seed(0)
    model = MBartForConditionalGeneration(config)
    with torch.no_grad():
        model.final_logits_bias.normal_()  # non-zero, so copying it is actually checked
    model.save_pretrained(directory)
    return directory, model, tokenizer


def test_from_mbart_loads_text_encoder_decoder_and_head_exactly(tmp_path):
    directory, mbart, _ = make_mbart_dir(tmp_path)
    config = build_config("tiny", vocab_size=7, attn_implementation="eager")  # sizes get replaced
    model = SignTranslationModel.from_mbart(directory, config)
    assert model.config.d_model == 32 and model.config.vocab_size == mbart.config.vocab_size
    assert model.config.decoder_layers == 2 and model.config.text_encoder_layers == 1
    ours = model.state_dict()
    for name, value in mbart.model.encoder.state_dict().items():
        assert torch.equal(ours[f"text_encoder.{name}"], value), name
    for name, value in mbart.model.decoder.state_dict().items():
        own = name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        assert torch.equal(ours[f"decoder.{own}"], value), name
    assert torch.equal(model.lm_head.weight, mbart.lm_head.weight)
    assert torch.equal(model.final_logits_bias, mbart.final_logits_bias)

    # With LoRA at its zero init, the decoder computes exactly mBART's decoder given the same memory.
    model.eval(), mbart.eval()
    memory = torch.randn(2, 5, 32)
    labels = torch.tensor([[0, 7, 9, 2], [0, 11, 2, 1]])
    decoder_input_ids = torch.tensor([[2, 0, 7, 9], [2, 0, 11, 2]])
    ours_logits = model(
        encoder_outputs=VisualEncoderOutput(last_hidden_state=memory, attention_mask=torch.ones(2, 5, dtype=torch.bool)),
        decoder_input_ids=decoder_input_ids,
        labels=labels,
    ).logits
    theirs = mbart(encoder_outputs=(memory,), attention_mask=torch.ones(2, 5), decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(ours_logits, theirs, rtol=1e-5, atol=1e-5)


def test_vocab_trim_keeps_rows_and_encodings(tmp_path):
    directory, mbart, tokenizer = make_mbart_dir(tmp_path)
    texts_file = tmp_path / "train.txt"
    texts_file.write_text("\n".join(TRIM_TEXTS) + "\n\n", encoding="utf-8")
    out = tmp_path / "trimmed"
    vocab_trim_main(["--mbart", str(directory), "--texts", str(texts_file), "--out", str(out)])

    used = sorted({i for ids in tokenizer(TRIM_TEXTS)["input_ids"] for i in ids} | set(tokenizer.all_special_ids))
    trimmed = MBartForConditionalGeneration.from_pretrained(out)
    assert trimmed.config.vocab_size == len(used) < mbart.config.vocab_size
    index = torch.tensor(used)
    assert torch.equal(trimmed.model.shared.weight, mbart.model.shared.weight[index])
    assert torch.equal(trimmed.lm_head.weight, mbart.lm_head.weight[index])
    assert torch.equal(trimmed.final_logits_bias, mbart.final_logits_bias[:, index])
    assert torch.equal(trimmed.model.decoder.layers[1].fc1.weight, mbart.model.decoder.layers[1].fc1.weight)

    new_tokenizer = load_tokenizer(out)
    assert len(new_tokenizer) == len(used)
    remap = {old: new for new, old in enumerate(used)}
    for text in TRIM_TEXTS:
        assert new_tokenizer(text).input_ids == [remap[i] for i in tokenizer(text).input_ids]
        assert new_tokenizer.decode(new_tokenizer(text).input_ids, skip_special_tokens=True) == text
    assert (new_tokenizer.bos_token_id, new_tokenizer.pad_token_id, new_tokenizer.eos_token_id) == (0, 1, 2)

    # The trimmed model computes the same logits over the kept tokens as the original.
    ids = torch.tensor([tokenizer(TRIM_TEXTS[0]).input_ids])
    new_ids = torch.tensor([new_tokenizer(TRIM_TEXTS[0]).input_ids])
    mbart.eval(), trimmed.eval()
    torch.testing.assert_close(trimmed(input_ids=new_ids).logits, mbart(input_ids=ids).logits[..., index])


def test_vocab_trim_of_an_mbart50_layout_keeps_every_language_code(tmp_path):
    """An mBART-50 directory (MBart50Tokenizer from a SentencePiece model, 52 language codes): trimming keeps
    every code with its embedding row, whatever languages the corpus uses, so --src-lang/--tgt-lang work on
    the trimmed model; the corpus encodes the same as a source and as a target, and the convention (decoder
    start, forced first token) survives renumbered. (Broken variant tried: keeping only the ids the corpus
    uses, which drops 51 of the 52 codes.)"""
    from recipe.tokenizer import MBART_50, detect_convention, language_codes, set_languages
    from tests.mbart_layout import mbart_checkpoint, mbart_tokenizer

    directory = tmp_path / "mbart50"
    tokenizer = mbart_tokenizer(directory, CORPUS * 4, MBART_50, src_lang="de_DE", tgt_lang="de_DE")
    mbart = mbart_checkpoint(directory, tokenizer)
    texts_file = tmp_path / "train.txt"
    texts_file.write_text("\n".join(TRIM_TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "trimmed"
    vocab_trim_main(["--mbart", str(directory), "--texts", str(texts_file), "--out", str(out)])

    trimmed_tokenizer = load_tokenizer(out)
    trimmed = MBartForConditionalGeneration.from_pretrained(out)
    codes, new_codes = language_codes(tokenizer), language_codes(trimmed_tokenizer)
    assert len(codes) == 52 and sorted(new_codes) == sorted(codes)
    assert trimmed.config.vocab_size == len(trimmed_tokenizer) < len(tokenizer)
    for code, old_id in codes.items():
        assert torch.equal(trimmed.model.shared.weight[new_codes[code]], mbart.model.shared.weight[old_id]), code
    before, after = detect_convention(tokenizer), detect_convention(trimmed_tokenizer)
    assert after.name == MBART_50 and after.forced_bos_token_id == new_codes["de_DE"] != before.forced_bos_token_id
    set_languages(trimmed_tokenizer, tgt_lang="fr_XX")  # a code the corpus never used is still there
    assert trimmed_tokenizer("heute nacht").input_ids[0] == new_codes["fr_XX"]
    assert trimmed.config.decoder_start_token_id == 2 and trimmed.generation_config.forced_eos_token_id == 2
