"""Shrink a local mBART (model + tokenizer) to the tokens a corpus uses.

    python -m recipe.vocab_trim --mbart MBART_DIR --texts train_sentences.txt --out TRIMMED_DIR

mBART-large-50 has 250,054 tokens; a sign-language corpus uses a few thousand. Keeping only those
(plus every special token and every language code: 52 rows in mBART-50, 25 in mBART-cc25, so any
--src-lang/--tgt-lang still works after trimming) removes ~240M parameters from the embedding and LM
head. Kept tokens keep their order, so the specials <s>,<pad>,</s>,<unk> stay at ids 0..3; their
embedding rows, LM-head rows and logit biases are copied exactly, and token ids in the model and
generation configs (decoder start, forced first token) are renumbered. The tokenizer's unigram
vocabulary is cut the same way; because every piece of the corpus's best segmentation is kept, the
corpus encodes to the same pieces, as a source and as a target, and the tool checks that on every line
before it finishes.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, MBartForConditionalGeneration

from recipe.tokenizer import language_codes

log = logging.getLogger(__name__)

VOCAB_ROW_KEYS = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id")


def read_texts(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line]
    if not texts:
        raise ValueError(f"{path} holds no sentences: give a UTF-8 text file with one training sentence per line")
    return texts


def kept_token_ids(tokenizer, texts: list[str]) -> list[int]:
    """Sorted ids the corpus uses (as a source and as a target), plus every special token and language code."""
    used = set(tokenizer.all_special_ids) | set(language_codes(tokenizer).values())
    encoded = tokenizer(texts, text_target=texts)
    for ids in encoded["input_ids"] + encoded["labels"]:
        used.update(ids)
    return sorted(used)


def trim_model(model: MBartForConditionalGeneration, kept: list[int]) -> MBartForConditionalGeneration:
    """A new mBART whose vocabulary rows are `kept` (in that order); all other weights copied."""
    index = torch.tensor(kept)
    remap = {old: new for new, old in enumerate(kept)}
    state = model.state_dict()
    for key in VOCAB_ROW_KEYS:
        state[key] = state[key][index].clone()
    state["final_logits_bias"] = state["final_logits_bias"][:, index].clone()
    config = model.config.to_dict()
    config["vocab_size"] = len(kept)
    for name in TOKEN_ID_FIELDS:
        if config.get(name) is not None:
            if config[name] not in remap:
                raise ValueError(f"special token {name}={config[name]} is not among the kept tokens")
            config[name] = remap[config[name]]
    trimmed = MBartForConditionalGeneration(type(model.config).from_dict(config))
    trimmed.load_state_dict(state, strict=True)
    for name in TOKEN_ID_FIELDS:
        value = getattr(model.generation_config, name, None)
        if value is not None:
            setattr(trimmed.generation_config, name, remap[value])
    return trimmed


def trim_tokenizer_json(tokenizer_json: dict, kept: list[int]) -> dict:
    """Cut a Unigram `tokenizer.json` to `kept` ids and renumber specials and templates."""
    model = tokenizer_json["model"]
    if model.get("type") != "Unigram":
        raise ValueError(f"vocabulary trimming supports Unigram (SentencePiece) tokenizers, got {model.get('type')}")
    remap = {old: new for new, old in enumerate(kept)}
    vocab = model["vocab"]
    model["vocab"] = [vocab[old] for old in kept if old < len(vocab)]
    if model.get("unk_id") is not None:
        model["unk_id"] = remap[model["unk_id"]]
    tokenizer_json["added_tokens"] = [
        {**token, "id": remap[token["id"]]} for token in tokenizer_json.get("added_tokens", []) if token["id"] in remap
    ]

    def renumber_templates(node):
        if isinstance(node, dict):
            if "special_tokens" in node and isinstance(node["special_tokens"], dict):
                for special in node["special_tokens"].values():
                    special["ids"] = [remap[i] for i in special["ids"]]
            for value in node.values():
                renumber_templates(value)
        elif isinstance(node, list):
            for value in node:
                renumber_templates(value)

    renumber_templates(tokenizer_json.get("post_processor"))
    return tokenizer_json


def trim(mbart_dir: Path, texts: list[str], out_dir: Path) -> list[int]:
    """Write the trimmed model and tokenizer to `out_dir`; return the kept old ids (new id = position)."""
    tokenizer = AutoTokenizer.from_pretrained(mbart_dir, local_files_only=True)
    model = MBartForConditionalGeneration.from_pretrained(mbart_dir, local_files_only=True)
    kept = kept_token_ids(tokenizer, texts)
    if kept[-1] >= model.config.vocab_size:
        raise ValueError(f"tokenizer in {mbart_dir} produces id {kept[-1]} beyond the model's {model.config.vocab_size} rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    trim_model(model, kept).save_pretrained(out_dir)

    tokenizer.save_pretrained(out_dir)
    for stale in out_dir.glob("*.model"):  # a SentencePiece file would describe the untrimmed vocabulary
        stale.unlink()
    trimmed_json = trim_tokenizer_json(json.loads(tokenizer.backend_tokenizer.to_str()), kept)
    Tokenizer.from_str(json.dumps(trimmed_json)).save(str(out_dir / "tokenizer.json"))
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    remap = {old: new for new, old in enumerate(kept)}
    if "added_tokens_decoder" in tokenizer_config:
        tokenizer_config["added_tokens_decoder"] = {
            str(remap[int(i)]): token for i, token in tokenizer_config["added_tokens_decoder"].items() if int(i) in remap
        }
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")

    verify(tokenizer, AutoTokenizer.from_pretrained(out_dir, local_files_only=True), texts, kept)
    return kept


def verify(original, trimmed, texts: list[str], kept: list[int]) -> None:
    """Every corpus line must encode to the same tokens, renumbered, as a source and as a target; every
    language code must survive under its name."""
    remap = {old: new for new, old in enumerate(kept)}
    expected = {code: remap.get(i) for code, i in language_codes(original).items()}
    if expected != language_codes(trimmed):
        raise RuntimeError(f"trimmed tokenizer lost or renumbered language codes: {expected} vs {language_codes(trimmed)}")
    before, after = original(texts, text_target=texts), trimmed(texts, text_target=texts)
    for side in ("input_ids", "labels"):
        for line, (old_ids, new_ids) in enumerate(zip(before[side], after[side]), start=1):
            if [remap[i] for i in old_ids] != new_ids:
                raise RuntimeError(f"trimmed tokenizer encodes line {line} differently ({side}): {texts[line - 1]!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mbart", type=Path, required=True, help="local MBartForConditionalGeneration dir with tokenizer")
    parser.add_argument("--texts", type=Path, required=True, help="UTF-8 file, one training sentence per line")
    parser.add_argument("--out", type=Path, required=True, help="where the trimmed model + tokenizer go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    texts = read_texts(args.texts)
    kept = trim(args.mbart, texts, args.out)
    log.info("kept %d tokens for %d sentences; wrote %s", len(kept), len(texts), args.out)


if __name__ == "__main__":
    main()
