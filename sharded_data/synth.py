"""The synthetic sign corpus: the project's default data set, generated deterministically and written as shards.

    python -m sharded_data.synth --out data/synth-tiny                      # tiny preset, mp4, seed 0
    python -m sharded_data.synth --out DIR --preset small --seed 1 --video-format npy
    python -m sharded_data.synth --out DIR --sentences my_sentences.txt     # your text, one sentence a line

Sentences come from a weather-report grammar (grammar.py) or a text file; each word has a fixed sign
(signs.py) and each sample is one signer signing one sentence. Like real corpora, one sentence is signed by
several signers (`signers_per_sentence`, as in CSL-Daily) and a few greetings are repeated many times
(`repeat_sentences`, as "guten abend liebe zuschauer" in PHOENIX-2014T), so same-text pairs exist in every
batch-sized sample of the data. Dev and test sentences are new combinations of words seen in training:
a model that learns the signs can translate them, one that memorizes sentences cannot.

Generation is planned up front (texts, signers, a render seed per sample) from the seed; each
`SynthVideoSource` renders its frames when the writer's worker process asks, so the same seed gives the
same bytes whatever the number of workers.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from sharded_data.format import VIDEO_FORMATS, normalize_text
from sharded_data.grammar import GREETINGS, Grammar, greeting_words
from sharded_data.signs import SignerStyle, make_signer, render_sentence, sentence_length, stable_seed
from sharded_data.sources import VideoSource
from sharded_data.write import write_corpus

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
SOURCE_NAME = "synthetic"
# How many grammar draws in a row may give an already used (or, for dev/test, unusable) sentence before
# the generator concludes that the restricted grammar cannot give more.
MAX_MISSES = 20000


@dataclass
class SynthConfig:
    """Everything that decides the corpus (with the seed, the same config gives the same bytes)."""

    preset: str = "tiny"
    seed: int = 0
    frame_size: tuple[int, int] = (32, 32)  # (H, W)
    fps: float = 25.0
    vocab_size: int = 60  # words of the built-in grammar (greetings included); ignored with sentences_file
    min_words: int = 3  # sentence length range of the built-in grammar
    max_words: int = 7
    frames_per_word: int = 5  # at signer speed 1; each word varies by +-1 frame per sample
    transition_frames: int = 1  # frames between two signs (and from/to the rest pose)
    num_signers: int = 8
    signers_per_sentence: tuple[int, int] = (2, 4)  # each sentence is signed by this many different signers
    repeat_sentences: tuple[int, int] = (2, 12)  # k sentences (greetings) signed r times each, in train; (0, 0) off
    signer_variation: float = 1.0  # scales differences in body size/position, hand size, speed and noise
    train: int = 1000
    dev: int = 100
    test: int = 100
    sentences_file: str | None = None  # one sentence a line instead of the grammar

    def __post_init__(self) -> None:
        self.frame_size = tuple(int(side) for side in self.frame_size)
        self.signers_per_sentence = tuple(int(n) for n in self.signers_per_sentence)
        self.repeat_sentences = tuple(int(n) for n in self.repeat_sentences)

    def validate(self) -> None:
        low, high = self.signers_per_sentence
        checks = [
            (len(self.frame_size) == 2 and min(self.frame_size) >= 16, f"frame_size {self.frame_size}: need H, W >= 16"),
            (self.fps > 0, f"fps must be positive, got {self.fps}"),
            (1 <= self.min_words <= self.max_words, f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}"),
            (self.frames_per_word >= 2, f"frames_per_word must be >= 2, got {self.frames_per_word}"),
            (self.transition_frames >= 0, f"transition_frames must be >= 0, got {self.transition_frames}"),
            (self.num_signers >= 1, f"num_signers must be >= 1, got {self.num_signers}"),
            (1 <= low <= high <= self.num_signers,
             f"signers_per_sentence {low}-{high}: need 1 <= MIN <= MAX <= num_signers ({self.num_signers})"),
            (min(self.repeat_sentences) >= 0 and len(self.repeat_sentences) == 2,
             f"repeat_sentences {self.repeat_sentences}: need two counts K R >= 0"),
            (self.repeat_sentences[0] * self.repeat_sentences[1] <= self.train,
             f"repeat_sentences {self.repeat_sentences} asks for more samples than train has ({self.train})"),
            (self.train >= 1 and self.dev >= 0 and self.test >= 0, "need train >= 1 and dev, test >= 0 samples"),
            (self.signer_variation >= 0, f"signer_variation must be >= 0, got {self.signer_variation}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"synthetic corpus config: {message}")


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(preset="tiny"),
    "small": SynthConfig(
        preset="small", frame_size=(64, 64), vocab_size=150, min_words=3, max_words=10, frames_per_word=6,
        transition_frames=2, num_signers=16, signers_per_sentence=(2, 5), repeat_sentences=(4, 30),
        signer_variation=1.0, train=6000, dev=400, test=400,
    ),
    "base": SynthConfig(
        preset="base", frame_size=(112, 112), vocab_size=300, min_words=3, max_words=12, frames_per_word=8,
        transition_frames=2, num_signers=24, signers_per_sentence=(1, 6), repeat_sentences=(6, 60),
        signer_variation=1.3, train=20000, dev=1000, test=1000,
    ),
}

SYNTH_PRESETS_DOC = """\
Synthetic corpus presets (`python -m sharded_data.synth --preset P`); every setting can be overridden by a flag.

| preset | frames | vocabulary | words/sentence | frames/word | signers (per sentence) | repeated greetings | train/dev/test |
|---|---|---|---|---|---|---|---|
| tiny  | 32x32   | 60 words   | 3-7  | 5: 4-6 by signer speed, +-1 per sample; 1 transition frame  | 8 (2-4)  | 2 x 12 | 1000/100/100 |
| small | 64x64   | 150 words  | 3-10 | 6: 5-7 by signer speed, +-1 per sample; 2 transition frames | 16 (2-5) | 4 x 30 | 6000/400/400 |
| base  | 112x112 | 288 words (the whole grammar) | 3-12 | 8: 6-10 by signer speed, +-1 per sample; 2 transition frames | 24 (1-6) | 6 x 60 | 20000/1000/1000 |

How hard they are. `tiny` is the CPU demo: 60 signs, each 3-7 frames of a 32x32 video in which a hand is a
blob of a few pixels, so position, path and the second hand carry the word more than the hand shape does;
sentences are ~23-55 frames (mean 37). `small` doubles the resolution (hand shapes become visible), has 2.5x the
vocabulary and twice the signers. `base` has the whole grammar (288 words, many rare place names and
numbers), longer sentences (36-125 frames, mean 65), 24 signers with 1.3x the geometric/speed/noise variation,
and sentences seen by a single signer. In every preset signers differ in skin, clothes, hair and background
colours, background texture, body scale (+-10%), position in the frame, hand size, speed (frames per word
x0.82-1.22; x0.77-1.30 in base) and pixel noise; dev/test sentences are unseen combinations of training words, signed by the
same signer pool.

Cost to write (mp4, CPU time measured on a shared machine; divide by the number of --num-workers):
tiny ~17 ms per sample, ~20 s CPU in all, about 10 MB; small ~45 ms per sample, ~5 min CPU, about 100 MB;
base ~140 ms per sample, ~50 min CPU, about 1.4 GB. `--video-format npy` skips encoding but is ~15x larger.
"""


# ----------------------------------------------------------------------------------------------- sources


@dataclass(kw_only=True)
class SynthVideoSource(VideoSource):
    """One synthetic sample: what the renderer needs to draw it, the same in any process."""

    words: tuple[str, ...]
    style: SignerStyle
    frame_size: tuple[int, int]
    frames_per_word: int
    transition_frames: int
    render_seed: int

    def load_frames(self) -> np.ndarray:
        return render_sentence(self.words, self.style, self.frame_size, self.frames_per_word,
                               self.transition_frames, self.render_seed)

    def location(self) -> str:
        return f"{self.name} (synthetic: {self.style.name} signs {' '.join(self.words)!r})"


def sign_words(text: str) -> tuple[str, ...]:
    """The words a sentence is signed with: its normalized word characters (punctuation is not signed)."""
    return tuple(re.findall(r"\w+", normalize_text(text)))


# ------------------------------------------------------------------------------------------- sentences


def read_sentences(path: str | Path) -> list[str]:
    """Distinct sentences of a text file, one a line, in file order; blank lines are skipped.

    Lines that are signed alike ("Rain today." and "rain today") are one sentence (the first spelling is
    kept): two sentence ids for the same video content would make identical videos each other's negatives.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sentences file not found (one sentence per line, UTF-8)")
    sentences, seen, skipped = [], set(), 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 ({error.reason}); save the file as UTF-8") from error
            if not line:
                continue
            if not sign_words(line):
                log.warning("%s:%d: no word to sign in %r; skipped", path, number, line)
                skipped += 1
                continue
            if sign_words(line) not in seen:
                seen.add(sign_words(line))
                sentences.append(line)
    if not sentences:
        raise ValueError(f"{path}: no sentence with words in the file ({skipped} lines skipped)")
    return sentences


def grammar_sentences(config: SynthConfig, rng: np.random.Generator, needed: dict[str, int]) -> dict[str, list[str]]:
    """Distinct grammar sentences per split: `needed[split]` of them; dev/test made of training words only.

    Dev and test sentences are drawn first, so that a training set that uses up a small grammar cannot
    leave nothing for them; those with a word that training lacks are then replaced.
    """
    repeats = config.repeat_sentences[0] if config.repeat_sentences[1] > 0 else 0
    grammar = Grammar().with_lengths(config.min_words, config.max_words)
    grammar = grammar.restricted(config.vocab_size, reserved=greeting_words(repeats))
    used = {normalize_text(sentence) for sentence in GREETINGS[:repeats]}
    out = {"repeated": list(GREETINGS[:repeats]), "train": [], "dev": [], "test": []}

    def draw(split: str, allowed_words: set[str] | None) -> None:
        misses = 0
        while len(out[split]) < needed[split] and misses < MAX_MISSES:
            sentence = grammar.sample(rng)
            key = normalize_text(sentence)
            if key in used or (allowed_words is not None and not set(sign_words(sentence)) <= allowed_words):
                misses += 1
                continue
            misses = 0
            used.add(key)
            out[split].append(sentence)

    draw("dev", None)
    draw("test", None)
    draw("train", None)
    train_words = {word for sentence in out["train"] + out["repeated"] for word in sign_words(sentence)}
    for split in ("dev", "test"):
        out[split] = [sentence for sentence in out[split] if set(sign_words(sentence)) <= train_words]
        draw(split, train_words)
    return out


def file_sentences(sentences: list[str], rng: np.random.Generator, repeats: int, needed: dict[str, int]) -> dict[str, list[str]]:
    """Split a file's sentences so that every dev/test word also occurs in a training sentence.

    Held-out sentences are chosen first, each only if all its words still occur in sentences left for
    training; then training takes sentences covering those words before the others.
    """
    order = [sentences[i] for i in rng.permutation(len(sentences))]
    repeated, rest = order[:repeats], order[repeats:]
    if len(repeated) < repeats:
        raise ValueError(f"cannot repeat {repeats} sentences: the file has only {len(sentences)} distinct ones")
    remaining_words = collections.Counter(word for sentence in rest for word in set(sign_words(sentence)))
    held_out_words = set()
    out: dict[str, list[str]] = {"repeated": repeated, "dev": [], "test": []}
    for split in ("dev", "test"):
        for sentence in list(rest):
            if len(out[split]) >= needed[split]:
                break
            words = set(sign_words(sentence))
            if all(remaining_words[word] > 1 for word in words):  # the word stays in some training sentence
                remaining_words.subtract(words)
                held_out_words |= words
                out[split].append(sentence)
                rest.remove(sentence)
    covered = {word for sentence in repeated for word in sign_words(sentence)}
    cover_first = []
    for sentence in rest:
        words = set(sign_words(sentence))
        if words & (held_out_words - covered):
            cover_first.append(sentence)
            covered |= words
    chosen = set(cover_first)
    others = [sentence for sentence in rest if sentence not in chosen]
    out["train"] = (cover_first + others)[: needed["train"]]
    train_words = covered | {word for sentence in out["train"] for word in sign_words(sentence)}
    for split in ("dev", "test"):  # if train had to be cut short, drop held-out sentences it no longer covers
        out[split] = [sentence for sentence in out[split] if set(sign_words(sentence)) <= train_words]
    return out


# ---------------------------------------------------------------------------------------------- planning


def signer_counts(rng: np.random.Generator, total: int, low: int, high: int) -> list[int]:
    """Signers per sentence, each in [low, high], summing to `total` (the last may be short if total < low)."""
    counts = []
    while sum(counts) < total:
        counts.append(int(rng.integers(low, high + 1)))
    excess = sum(counts) - total
    while excess > 0:  # take signers away from random sentences that have more than `low`
        reducible = [i for i, n in enumerate(counts) if n > low]
        if not reducible:
            counts[-1] -= excess
            break
        counts[int(rng.choice(reducible))] -= 1
        excess -= 1
    return [n for n in counts if n > 0]


@dataclass
class CorpusPlan:
    splits: dict[str, list[SynthVideoSource]]
    signers: list[SignerStyle]
    vocabulary: list[str]  # the words of the training sentences
    info: dict = field(default_factory=dict)


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    """Decide every sample (text, signer, render seed) of every split; renders nothing."""
    config.validate()
    rng = np.random.default_rng(stable_seed("corpus", config.seed))
    sentence_rng = np.random.default_rng(stable_seed("sentences", config.seed))
    signers = [make_signer(i, config.seed, config.signer_variation) for i in range(config.num_signers)]
    low, high = config.signers_per_sentence
    repeats, times = config.repeat_sentences if config.repeat_sentences[1] > 0 else (0, 0)
    counts = {
        "train": signer_counts(rng, config.train - repeats * times, low, high),
        "dev": signer_counts(rng, config.dev, low, high),
        "test": signer_counts(rng, config.test, low, high),
    }
    needed = {split: len(split_counts) for split, split_counts in counts.items()}
    if config.sentences_file:
        where = config.sentences_file
        texts = file_sentences(read_sentences(config.sentences_file), sentence_rng, repeats, needed)
    else:
        where = f"the grammar restricted to {config.vocab_size} words of {config.min_words}-{config.max_words}-word sentences"
        texts = grammar_sentences(config, sentence_rng, needed)

    def signed(sentence: str, count: int, allow_repeats: bool = False) -> list[tuple[str, int]]:
        chosen = rng.choice(config.num_signers, count, replace=allow_repeats and count > config.num_signers)
        return [(sentence, int(signer)) for signer in chosen]

    samples: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for sentence in texts["repeated"]:
        samples["train"] += signed(sentence, times, allow_repeats=True)
    for split in SPLITS:
        for sentence, count in zip(texts[split], counts[split]):
            samples[split] += signed(sentence, count)
        wanted = getattr(config, split)
        if len(samples[split]) < wanted:
            if split != "train" and not samples[split]:
                more = "give more sentences" if config.sentences_file else "raise --vocab-size"
                raise ValueError(f"{where}: no unused sentence made only of training words is left for {split}; "
                                 f"{more}, lower --train, or set --{split} 0")
            log.warning("%s gives too few distinct sentences: %s has %d samples, not %d",
                        where, split, len(samples[split]), wanted)
    train_words = {word for sentence, _ in samples["train"] for word in sign_words(sentence)}

    splits = {}
    for split in SPLITS:
        planned = samples[split]
        order = rng.permutation(len(planned))  # sentences' signers are not adjacent, as in a real corpus
        splits[split] = [
            SynthVideoSource(
                name=f"synth/{split}/{sample_id:06d}",
                text=planned[index][0],
                signer=signers[planned[index][1]].name,
                fps=float(config.fps),
                words=sign_words(planned[index][0]),
                style=signers[planned[index][1]],
                frame_size=config.frame_size,
                frames_per_word=config.frames_per_word,
                transition_frames=config.transition_frames,
                render_seed=stable_seed("render", config.seed, split, sample_id),
            )
            for sample_id, index in enumerate(order)
        ]
    splits = {split: sources for split, sources in splits.items() if sources}
    info = corpus_info(config, splits, sorted(train_words))
    return CorpusPlan(splits, signers, sorted(train_words), info)


def corpus_info(config: SynthConfig, splits: dict[str, list[SynthVideoSource]], vocabulary: list[str]) -> dict:
    """What corpus.json records about the generator (the writer adds counts, sizes and its own settings)."""
    per_split = {}
    for split, sources in splits.items():
        texts = [normalize_text(src.text) for src in sources]
        per_sentence = np.unique(texts, return_counts=True)[1]
        per_split[split] = dict(
            samples=len(sources),
            sentences=len(per_sentence),
            samples_per_sentence_max=int(per_sentence.max()),
            samples_with_same_text_twin=int(per_sentence[per_sentence > 1].sum()),
            frames_mean=round(float(np.mean([
                sentence_length(len(src.words), config.frames_per_word, config.transition_frames, src.style.speed)
                for src in sources])), 1),
        )
    return dict(
        generator="sharded_data.synth",
        preset=config.preset,
        settings=asdict(config),
        vocabulary_size=len(vocabulary),
        vocabulary=vocabulary,
        signers=sorted({src.signer for sources in splits.values() for src in sources}),
        splits=per_split,
    )


def write_synthetic_corpus(
    out_dir: str | Path,
    config: SynthConfig,
    *,
    video_format: str = "mp4",
    num_workers: int = 2,
    samples_per_shard: int = 100,
    progress: bool = False,
) -> dict:
    """Plan and write a synthetic corpus (what the CLI does); returns the writer's summary.

    Tests and the demo call this for a fixture corpus, e.g.
    `write_synthetic_corpus(tmp, replace(PRESETS["tiny"], train=64, dev=16, test=16), video_format="npy")`.
    """
    plan = plan_corpus(config)
    summary = write_corpus(out_dir, plan.splits, video_format=video_format, samples_per_shard=samples_per_shard,
                           num_workers=num_workers, source=SOURCE_NAME, corpus_info=plan.info, progress=progress)
    summary["vocabulary_size"] = plan.info["vocabulary_size"]
    return summary


# ------------------------------------------------------------------------------------------------- CLI


def parse_frame_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"frame size {text!r}: write HxW (e.g. 48x48) or one side (48)")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sharded_data.synth", description=__doc__.split("\n\n")[0],
                                     epilog=SYNTH_PRESETS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output shard folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, help="corpus seed (sentences, signers, noise); default 0")
    parser.add_argument("--video-format", choices=VIDEO_FORMATS, default="mp4")
    parser.add_argument("--sentences", metavar="FILE", help="sentences to sign, one per line (UTF-8), instead of the grammar")
    parser.add_argument("--vocab-size", type=int, help="words of the built-in grammar")
    parser.add_argument("--sentence-words", type=int, nargs=2, metavar=("MIN", "MAX"), help="grammar sentence lengths")
    parser.add_argument("--train", type=int, help="train samples")
    parser.add_argument("--dev", type=int, help="dev samples (0 = no dev split)")
    parser.add_argument("--test", type=int, help="test samples (0 = no test split)")
    parser.add_argument("--frame-size", type=parse_frame_size, metavar="HxW")
    parser.add_argument("--fps", type=float)
    parser.add_argument("--frames-per-word", type=int)
    parser.add_argument("--num-signers", type=int)
    parser.add_argument("--signers-per-sentence", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="different signers per sentence (raises --num-signers to MAX if the preset has fewer)")
    parser.add_argument("--repeat-sentences", type=int, nargs=2, metavar=("K", "R"),
                        help="K sentences signed R times each in train (greetings; with --sentences the first K of "
                             "the shuffled file); 0 0 = off. Default: the preset's, R capped at train/(10 K) with --train")
    parser.add_argument("--signer-variation", type=float)
    parser.add_argument("--num-workers", type=int, default=2, help="processes rendering/encoding shards")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    if args.sentences and args.vocab_size is not None:
        raise ValueError("--vocab-size applies to the built-in grammar; with --sentences the file's words are the vocabulary")
    overrides = dict(
        seed=args.seed, sentences_file=args.sentences, vocab_size=args.vocab_size, train=args.train, dev=args.dev,
        test=args.test, frame_size=args.frame_size, fps=args.fps, frames_per_word=args.frames_per_word,
        num_signers=args.num_signers, signers_per_sentence=args.signers_per_sentence,
        repeat_sentences=args.repeat_sentences, signer_variation=args.signer_variation,
    )
    if args.sentence_words:
        overrides.update(min_words=args.sentence_words[0], max_words=args.sentence_words[1])
    config = replace(PRESETS[args.preset], **{key: value for key, value in overrides.items() if value is not None})
    if args.train is not None and args.repeat_sentences is None:
        # The preset's greeting repeats are ~2.5% of its train split; keep them at most a tenth of a smaller
        # one (--train 32 with 2 greetings x 12 would be mostly greetings).
        repeats, times = config.repeat_sentences
        if repeats and times:
            config.repeat_sentences = (repeats, min(times, max(2, config.train // (10 * repeats))))
    if args.signers_per_sentence and args.num_signers is None:
        # Asking for more signers per sentence than the preset has signers means: use that many signers.
        config.num_signers = max(config.num_signers, args.signers_per_sentence[1])
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        summary = write_synthetic_corpus(args.out, config_from_args(args), video_format=args.video_format,
                                         num_workers=args.num_workers, samples_per_shard=args.samples_per_shard,
                                         progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:  # the writer's BadVideo/SettingsMismatch are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    summary["total_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
