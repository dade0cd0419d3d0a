"""The target-language tokenizer: SentencePiece trained on the training sentences, as an HF fast tokenizer.

`train_tokenizer` trains a SentencePiece unigram model (or a character model, `character_level=True`,
for Chinese) with the `sentencepiece` package, then converts its pieces and normaliser into a
`tokenizers` Unigram tokenizer wrapped as `PreTrainedTokenizerFast`, so `save_pretrained` /
`from_pretrained` round-trip offline with no slow-tokenizer machinery (in transformers 5,
`MBartTokenizer(vocab_file=...)` silently ignores the file; see ENVIRONMENT.md).

Special tokens follow mBART's ids, so our configs and an mBART checkpoint agree:
<s>=0, <pad>=1, </s>=2, <unk>=3. Every encoded sentence is `<s> pieces </s>`: token 0 is a fixed start
token (the "cls" similarity reads the text encoder's output there) and </s> ends the target.
`load_tokenizer(dir)` loads either one of ours or a local mBART tokenizer directory.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
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
