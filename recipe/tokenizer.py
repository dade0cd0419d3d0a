"""Tokenizers: SentencePiece trained on the training sentences, or a local mBART tokenizer, and their conventions.

`train_tokenizer` trains a SentencePiece unigram model (or a character model, `character_level=True`,
for Chinese) with the `sentencepiece` package, then converts its pieces and normaliser into a
`tokenizers` Unigram tokenizer wrapped as `PreTrainedTokenizerFast`, so `save_pretrained` /
`from_pretrained` round-trip offline with no slow-tokenizer machinery (in transformers 5,
`MBartTokenizer(vocab_file=...)` silently ignores the file; see ENVIRONMENT.md).
`load_tokenizer(dir)` loads either one of ours or a local mBART tokenizer directory.

Three layouts of special tokens are supported, told apart by what the tokenizer actually produces
(`detect_convention`), not by its class name:

    convention      sentence (text encoder input and labels)   decoder starts with   generate forces
    sentencepiece   <s> pieces </s>          (ours)             </s>                  nothing
    mbart-cc25      pieces </s> lang_code    (MBartTokenizer)   lang_code (target)    nothing
    mbart-50        lang_code pieces </s>    (MBart50Tokenizer) </s>                  lang_code (target)

In mBART-cc25 (and GFSLT-VLP's trimmed copy of it) the target language code closes the labels and opens
the decoder input; in mBART-50 the decoder starts from </s> and the target code is forced as the first
generated token (`forced_bos_token_id`), as Hugging Face's translation examples do. Our own tokenizer
follows mBART's special ids (<s>=0, <pad>=1, </s>=2, <unk>=3).

The sentence representation of the `cls` similarity is a real special token in each convention:
position 0 (<s>, or mBART-50's language code) or, in mBART-cc25 where position 0 is a word piece, the
closing language code (the token GFSLT-VLP reads there), located from the attention mask.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPM_MODEL_FILE = "sentencepiece.model"


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int, character_level: bool = False
) -> PreTrainedTokenizerFast:
    """Train on `texts`, save the tokenizer (and the raw SentencePiece model) to `out_dir`, return it.

    `vocab_size` is an upper bound: a small corpus yields fewer pieces rather than an error.
    """
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer got no non-empty training sentences")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model_bytes,
        vocab_size=vocab_size,
        model_type="char" if character_level else "unigram",
        character_coverage=1.0,  # sign corpora are small: keep every character the targets use
        hard_vocab_limit=False,
        bos_id=BOS_ID,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_piece=BOS,
        pad_piece=PAD,
        eos_piece=EOS,
        unk_piece=UNK,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / SPM_MODEL_FILE).write_bytes(model_bytes.getvalue())
    tokenizer = _to_fast_tokenizer(model_bytes.getvalue())
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _to_fast_tokenizer(model_bytes: bytes) -> PreTrainedTokenizerFast:
    """SentencePiece model proto -> equivalent `tokenizers` Unigram pipeline (the conversion HF uses)."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    steps = [normalizers.Replace(Regex(" {2,}"), " ")]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.insert(0, normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved by `train_tokenizer` or a local mBART tokenizer directory (never downloads)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


# -- conventions -----------------------------------------------------------------------------------------
SENTENCEPIECE, MBART_CC25, MBART_50 = "sentencepiece", "mbart-cc25", "mbart-50"
LAYOUTS = {SENTENCEPIECE: "<s> pieces </s>", MBART_CC25: "pieces </s> lang_code", MBART_50: "lang_code pieces </s>"}


@dataclass(frozen=True)
class TokenizerConvention:
    """What the model must know about a tokenizer's special tokens (see the module docstring)."""

    name: str
    """One of LAYOUTS' keys."""
    decoder_start_token_id: int
    """First decoder input token, in training (shifted labels) and generation alike."""
    forced_bos_token_id: int | None
    """Token `generate` forces as the first generated one (mBART-50: the target language code)."""
    text_summary: str
    """Which text token is the sentence's representation for the `cls` similarity: "first" or "last"."""
    src_lang: str | None = None
    tgt_lang: str | None = None


def language_codes(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The tokenizer's language codes and their ids ({} for a tokenizer without languages, e.g. ours)."""
    return dict(getattr(tokenizer, "lang_code_to_id", None) or {})


def detect_convention(tokenizer: PreTrainedTokenizerBase) -> TokenizerConvention:
    """Which layout the tokenizer produces, from encoding a probe sentence in source and in target mode."""
    encoded = tokenizer("a", text_target="a")
    source, target = list(encoded["input_ids"]), list(encoded["labels"])
    eos = tokenizer.eos_token_id
    codes = set(language_codes(tokenizer).values())
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    src_lang, tgt_lang = getattr(tokenizer, "src_lang", None), getattr(tokenizer, "tgt_lang", None)
    if source[0] == start and source[-1] == eos and target[0] == start and target[-1] == eos and start not in codes:
        return TokenizerConvention(SENTENCEPIECE, eos, None, "first")
    if source[-2:-1] == [eos] and source[-1] in codes and target[-2:-1] == [eos] and target[-1] in codes:
        return TokenizerConvention(MBART_CC25, target[-1], None, "last", src_lang, tgt_lang)
    if source[0] in codes and source[-1] == eos and target[0] in codes and target[-1] == eos:
        return TokenizerConvention(MBART_50, eos, target[0], "first", src_lang, tgt_lang)
    raise ValueError(
        f"unsupported tokenizer layout {tokenizer.convert_ids_to_tokens(source)} (target "
        f"{tokenizer.convert_ids_to_tokens(target)}); supported: " + "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    )


def set_languages(tokenizer: PreTrainedTokenizerBase, src_lang: str = "", tgt_lang: str = "", where: str = "") -> None:
    """Give an mBART tokenizer its source and target language codes, each checked against its vocabulary.

    The text encoder reads the target sentences, so each language defaults to the other, then to what the
    tokenizer directory saved (`src_lang`/`tgt_lang` in its tokenizer_config.json). A tokenizer without
    language codes (ours) refuses them.
    """
    codes = language_codes(tokenizer)
    where = where or "the tokenizer"
    if not codes:
        if src_lang or tgt_lang:
            raise ValueError(f"{where} has no language codes: --src-lang/--tgt-lang apply to mBART tokenizers only")
        return
    saved = _saved_languages(tokenizer)
    tgt = tgt_lang or src_lang or saved.get("tgt_lang") or saved.get("src_lang")
    src = src_lang or tgt_lang or saved.get("src_lang") or saved.get("tgt_lang")
    if not (src and tgt):
        raise ValueError(f"{where} is an mBART tokenizer but names no language: give --tgt-lang (and --src-lang if "
                         f"the text encoder should read another code), e.g. --tgt-lang de_DE")
    for flag, code in (("--src-lang", src), ("--tgt-lang", tgt)):
        if code not in codes:
            raise ValueError(f"{flag} {code!r} is not a language code of {where}; it knows {sorted(codes)}")
    tokenizer.src_lang = src  # the setter rebuilds the source-mode post-processor
    tokenizer.tgt_lang = tgt


def _saved_languages(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """src_lang/tgt_lang as written in the tokenizer's own directory (an mBART class defaults them silently)."""
    directory = Path(getattr(tokenizer, "name_or_path", "") or ".")
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return {}
    values = json.loads(config.read_text(encoding="utf-8"))
    return {key: values[key] for key in ("src_lang", "tgt_lang") if values.get(key)}
