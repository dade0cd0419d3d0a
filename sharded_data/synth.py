"""The synthetic sign corpus: the project's default data set, generated deterministically and written as shards.

    python -m sharded_data.synth --out data/synth-tiny                      # tiny preset, mp4, seed 0
    python -m sharded_data.synth --out DIR --preset csl-like --seed 1       # a study preset (see --help)
    python -m sharded_data.synth --out DIR --sentences my_sentences.txt     # your text, one sentence a line

Each sample is one signer signing one meaning. A meaning (grammar.py: a weather-report frame with its
slots filled) has a gloss sequence, the signs that are rendered into the video (signs.py), and a spoken
translation, the sample's text: one of several templates of the frame with synonyms chosen at random, so
that, as in a real corpus, the text is a free translation of the signing and not a word-by-word gloss.

Like real corpora, a meaning is signed by several signers (`signers_per_sentence`, as in CSL-Daily), one
signer may sign far more than the others (`lead_signer_share`), and a few greetings are repeated many
times (`repeat_sentences`, as "guten abend liebe zuschauer" in PHOENIX-2014T). Knobs that make near
neighbours, for studies of false negatives: `retranslate_rate` (recordings of one meaning get their own
translations: hidden twins, same signs and another text) and `variant_rate` (meanings one sign apart).
Dev and test meanings are new combinations of signs seen in training: a model that learns the signs can
translate them, one that memorizes sentences cannot.

Every sample's gloss sequence and meaning id are recorded as ground truth (corpus.json's
`generator.ground_truth`, and `SynthVideoSource.ground_truth()` for the sample's json member);
`python -m sharded_data.inspect DIR --pairs` prints the pair statistics they give.

Generation is planned up front (meanings, texts, signers, a render seed per sample) from the seed, with
one random stream per decision and no iteration over sets, so the same seed gives the same bytes in every
process and whatever the number of workers.
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
from sharded_data.grammar import Grammar, Meaning, greeting_meanings, greeting_signs
from sharded_data.pair_stats import PairSample
from sharded_data.signs import SignerStyle, make_signer, render_sentence, sentence_length, stable_seed
from sharded_data.sources import VideoSource
from sharded_data.write import write_corpus

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
SOURCE_NAME = "synthetic"
# How many draws in a row may give an already used (or, for dev/test, unusable) meaning before the
# generator concludes that the restricted grammar cannot give more.
MAX_MISSES = 20000


@dataclass
class SynthConfig:
    """Everything that decides the corpus (with the seed, the same config gives the same bytes).

    Each knob models one property of real corpora; README "The synthetic corpus" shows their effect on
    the pair statistics.
    """

    preset: str = "tiny"
    seed: int = 0
    frame_size: tuple[int, int] = (32, 32)  # (H, W)
    fps: float = 25.0
    # The language: how many signs (the built-in grammar restricted to about this many; greetings
    # included; ignored with sentences_file) and how many signs a sentence has (optional signs included).
    vocab_size: int = 60
    min_signs: int = 3
    max_signs: int = 7
    # Free translation: spoken templates per frame (1 = always the usual phrasing), the chance that a
    # translation is not in the usual one (then one of the others), and the chance that a concept is
    # translated by a synonym instead of its usual word.
    paraphrases: int = 1
    paraphrase_rate: float = 0.4
    synonym_rate: float = 0.0
    # Signing: the chance that a signer leaves out an optional sign (a pointing sign IX, ALSO).
    drop_rate: float = 0.0
    # Near neighbours: the chance that a recording gets its own translation instead of its meaning's (hidden
    # twins), and that a new meaning is an earlier one with one sign changed (one-sign-apart pairs).
    retranslate_rate: float = 0.0
    variant_rate: float = 0.0
    # Timing of the video.
    frames_per_sign: int = 5  # at signer speed 1; each sign varies by +-1 frame per sample
    transition_frames: int = 1  # frames between two signs (and from/to the rest pose)
    # Signers: how many, how many sign each meaning (different people), the share of all samples signed by
    # signer00 (0 = everyone alike), and how different they look and move (the signer nuisance).
    num_signers: int = 8
    signers_per_sentence: tuple[int, int] = (2, 4)
    lead_signer_share: float = 0.0
    signer_variation: float = 1.0
    repeat_sentences: tuple[int, int] = (2, 12)  # k greetings recorded r times each, in train; (0, 0) off
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
        rates = ("paraphrase_rate", "synonym_rate", "drop_rate", "retranslate_rate", "variant_rate")
        checks = [
            (len(self.frame_size) == 2 and min(self.frame_size) >= 16, f"frame_size {self.frame_size}: need H, W >= 16"),
            (self.fps > 0, f"fps must be positive, got {self.fps}"),
            (1 <= self.min_signs <= self.max_signs, f"need 1 <= min_signs <= max_signs, got {self.min_signs}, {self.max_signs}"),
            (self.paraphrases >= 1, f"paraphrases must be >= 1, got {self.paraphrases}"),
            *((0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1], got {getattr(self, name)}") for name in rates),
            (self.frames_per_sign >= 2, f"frames_per_sign must be >= 2, got {self.frames_per_sign}"),
            (self.transition_frames >= 0, f"transition_frames must be >= 0, got {self.transition_frames}"),
            (self.num_signers >= 1, f"num_signers must be >= 1, got {self.num_signers}"),
            (1 <= low <= high <= self.num_signers,
             f"signers_per_sentence {low}-{high}: need 1 <= MIN <= MAX <= num_signers ({self.num_signers})"),
            (0.0 <= self.lead_signer_share < 1.0, f"lead_signer_share must be in [0, 1), got {self.lead_signer_share}"),
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


# The study presets are calibrated in benchmarks/results/corpus.md (pair statistics against PHOENIX-2014T
# and CSL-Daily; BLEU of the tiny model after ~5 minutes of translation-only training on one core).
PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(preset="tiny"),
    "small": SynthConfig(
        preset="small", frame_size=(64, 64), vocab_size=150, min_signs=3, max_signs=9, frames_per_sign=6,
        transition_frames=2, num_signers=16, signers_per_sentence=(2, 5), repeat_sentences=(4, 30),
        signer_variation=1.0, train=6000, dev=400, test=400,
    ),
    "base": SynthConfig(
        preset="base", frame_size=(112, 112), vocab_size=300, min_signs=3, max_signs=9, frames_per_sign=8,
        transition_frames=2, num_signers=24, signers_per_sentence=(1, 6), repeat_sentences=(6, 60),
        signer_variation=1.3, train=20000, dev=1000, test=1000,
    ),
    "csl-like": SynthConfig(
        preset="csl-like", vocab_size=80, min_signs=3, max_signs=6, paraphrases=3, synonym_rate=0.2, drop_rate=0.2,
        frames_per_sign=4, num_signers=10, signers_per_sentence=(2, 4), lead_signer_share=0.36,
        repeat_sentences=(0, 0), train=2400, dev=200, test=400,
    ),
    "phoenix-like": SynthConfig(
        preset="phoenix-like", vocab_size=80, min_signs=3, max_signs=6, paraphrases=3, synonym_rate=0.2,
        drop_rate=0.2, frames_per_sign=4, num_signers=9, signers_per_sentence=(1, 1), repeat_sentences=(3, 30),
        train=2400, dev=200, test=400,
    ),
    "dense-neighbours": SynthConfig(
        preset="dense-neighbours", vocab_size=80, min_signs=3, max_signs=6, paraphrases=3, synonym_rate=0.2,
        drop_rate=0.1, retranslate_rate=0.7, variant_rate=0.9, frames_per_sign=4, num_signers=10,
        signers_per_sentence=(3, 5), repeat_sentences=(0, 0), train=2400, dev=200, test=400,
    ),
}

SYNTH_PRESETS_DOC = """\
Synthetic corpus presets (`python -m sharded_data.synth --preset P`); every setting can be overridden by a flag.
README "The synthetic corpus" has the table of presets and their pair statistics next to the real corpora's.
"""


# ----------------------------------------------------------------------------------------------- sources


@dataclass(kw_only=True)
class SynthVideoSource(VideoSource):
    """One synthetic sample: what the renderer needs to draw it, the same in any process."""

    signs: tuple[str, ...]
    meaning_id: int
    style: SignerStyle
    frame_size: tuple[int, int]
    frames_per_sign: int
    transition_frames: int
    render_seed: int

    def load_frames(self) -> np.ndarray:
        return render_sentence(self.signs, self.style, self.frame_size, self.frames_per_sign,
                               self.transition_frames, self.render_seed)

    def location(self) -> str:
        return f"{self.name} (synthetic: {self.style.name} signs {' '.join(self.signs)!r})"

    def ground_truth(self) -> dict:
        return {"gloss": " ".join(self.signs), "meaning_id": self.meaning_id}


def sign_words(text: str) -> tuple[str, ...]:
    """The words of a sentence of a user's file: its normalized word characters (punctuation is not signed).
    Each word is one sign (the file has no gloss layer)."""
    return tuple(re.findall(r"\w+", normalize_text(text)))


# ------------------------------------------------------------------------------------------- meanings


@dataclass
class PlannedMeaning:
    """One meaning of one split: its id, its usual translation, and how to sign it."""

    meaning_id: int
    text: str
    meaning: Meaning | None = None  # None: a sentence of the user's file (its words are its signs)
    repeated: bool = False  # a greeting: every recording takes its own spoken form

    def all_signs(self) -> tuple[str, ...]:
        """Every sign the meaning may use (optional ones included)."""
        return self.meaning.glosses() if self.meaning else tuple(word.upper() for word in sign_words(self.text))

    def signed(self, rng: np.random.Generator, drop_rate: float) -> tuple[str, ...]:
        return self.meaning.glosses(rng, drop_rate) if self.meaning else self.all_signs()


def read_sentences(path: str | Path) -> list[str]:
    """Distinct sentences of a text file, one a line, in file order; blank lines are skipped.

    Lines that are signed alike ("Rain today." and "rain today") are one sentence (the first spelling is
    kept): two sentence ids for the same video content would make identical videos each other's negatives.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sentences file not found (one sentence per line, UTF-8)")
    sentences, seen, skipped = [], {}, 0
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
                seen[sign_words(line)] = None
                sentences.append(line)
    if not sentences:
        raise ValueError(f"{path}: no sentence with words in the file ({skipped} lines skipped)")
    return sentences


class MeaningDrawer:
    """Draws distinct meanings with distinct usual translations, over all splits of one corpus."""

    def __init__(self, config: SynthConfig, grammar: Grammar, rng: np.random.Generator, text_rng: np.random.Generator):
        self.config, self.grammar, self.rng, self.text_rng = config, grammar, rng, text_rng
        self.used: dict[tuple, int] = {}  # meaning key -> meaning id
        self.text_owner: dict[str, int] = {}  # normalized text -> meaning id

    def translate(self, meaning: Meaning) -> str:
        return meaning.translate(self.text_rng, self.config.paraphrases, self.config.synonym_rate,
                                 self.config.paraphrase_rate)

    def claim(self, text: str, meaning_id: int) -> bool:
        """Reserve a text for a meaning; False if another meaning already says it."""
        owner = self.text_owner.setdefault(normalize_text(text), meaning_id)
        return owner == meaning_id

    def add(self, meaning: Meaning, repeated: bool = False) -> PlannedMeaning | None:
        if meaning.key() in self.used:
            return None
        meaning_id = len(self.used)
        text = self.translate(meaning)
        if not self.claim(text, meaning_id):
            return None
        self.used[meaning.key()] = meaning_id
        return PlannedMeaning(meaning_id, text, meaning, repeated)

    def draw(self, planned: list[PlannedMeaning], needed: int, allowed_signs: dict | None = None) -> None:
        """Append new meanings to `planned` until it has `needed`; with `allowed_signs`, only meanings
        made of those signs. A share `variant_rate` of them are an earlier meaning of `planned` with one
        sign changed."""
        misses = 0
        while len(planned) < needed and misses < MAX_MISSES:
            if planned and self.config.variant_rate > 0 and self.rng.random() < self.config.variant_rate:
                base = planned[int(self.rng.integers(len(planned)))]
                meaning = self.grammar.variant(base.meaning, self.rng) if base.meaning else None
            else:
                meaning = self.grammar.sample(self.rng)
            if meaning is None or meaning.key() in self.used or (
                    allowed_signs is not None and not all(sign in allowed_signs for sign in meaning.glosses())):
                misses += 1
                continue
            added = self.add(meaning)
            if added is None:
                misses += 1
                continue
            misses = 0
            planned.append(added)


def grammar_meanings(config: SynthConfig, rng: np.random.Generator, text_rng: np.random.Generator,
                     needed: dict[str, int]) -> tuple[dict[str, list[PlannedMeaning]], MeaningDrawer]:
    """Distinct meanings per split: `needed[split]` of them; dev/test made of training signs only.

    Dev and test meanings are drawn first, so that a training set that uses up a small grammar cannot leave
    nothing for them; those with a sign that training lacks are then replaced.
    """
    repeats = config.repeat_sentences[0] if config.repeat_sentences[1] > 0 else 0
    grammar = Grammar().with_lengths(config.min_signs, config.max_signs)
    grammar = grammar.restricted(config.vocab_size, reserved=greeting_signs(repeats))
    drawer = MeaningDrawer(config, grammar, rng, text_rng)
    out: dict[str, list[PlannedMeaning]] = {"repeated": [], "train": [], "dev": [], "test": []}
    for greeting in greeting_meanings(repeats):
        out["repeated"].append(drawer.add(greeting, repeated=True))
    for split in ("dev", "test", "train"):
        drawer.draw(out[split], needed[split])
    train_signs = dict.fromkeys(sign for planned in out["train"] + out["repeated"] for sign in planned.all_signs())
    for split in ("dev", "test"):
        out[split] = [planned for planned in out[split] if all(sign in train_signs for sign in planned.all_signs())]
        drawer.draw(out[split], needed[split], train_signs)
    return out, drawer


def file_meanings(sentences: list[str], rng: np.random.Generator, repeats: int,
                  needed: dict[str, int]) -> dict[str, list[PlannedMeaning]]:
    """Split a file's sentences so that every dev/test word also occurs in a training sentence.

    Held-out sentences are chosen first, each only if all its words still occur in sentences left for
    training; then training takes sentences covering those words before the others.
    """
    order = [sentences[i] for i in rng.permutation(len(sentences))]
    repeated, rest = order[:repeats], order[repeats:]
    if len(repeated) < repeats:
        raise ValueError(f"cannot repeat {repeats} sentences: the file has only {len(sentences)} distinct ones")
    remaining_words = collections.Counter(word for sentence in rest for word in dict.fromkeys(sign_words(sentence)))
    held_out_words: dict[str, None] = {}
    out: dict[str, list[str]] = {"repeated": repeated, "dev": [], "test": []}
    for split in ("dev", "test"):
        for sentence in list(rest):
            if len(out[split]) >= needed[split]:
                break
            words = dict.fromkeys(sign_words(sentence))
            if all(remaining_words[word] > 1 for word in words):  # the word stays in some training sentence
                remaining_words.subtract(list(words))
                held_out_words.update(words)
                out[split].append(sentence)
                rest.remove(sentence)
    covered = dict.fromkeys(word for sentence in repeated for word in sign_words(sentence))
    cover_first = []
    for sentence in rest:
        words = sign_words(sentence)
        if any(word in held_out_words and word not in covered for word in words):
            cover_first.append(sentence)
            covered.update(dict.fromkeys(words))
    chosen = dict.fromkeys(cover_first)
    others = [sentence for sentence in rest if sentence not in chosen]
    out["train"] = (cover_first + others)[: needed["train"]]
    train_words = dict(covered, **dict.fromkeys(word for sentence in out["train"] for word in sign_words(sentence)))
    for split in ("dev", "test"):  # if train had to be cut short, drop held-out sentences it no longer covers
        out[split] = [sentence for sentence in out[split] if all(word in train_words for word in sign_words(sentence))]
    numbered = {}
    meaning_id = 0
    for split in ("repeated", "train", "dev", "test"):
        numbered[split] = []
        for sentence in out[split]:
            numbered[split].append(PlannedMeaning(meaning_id, sentence, repeated=split == "repeated"))
            meaning_id += 1
    return numbered


# ---------------------------------------------------------------------------------------------- planning


def signer_counts(rng: np.random.Generator, total: int, low: int, high: int) -> list[int]:
    """Signers per meaning, each in [low, high], summing to `total` (the last may be short if total < low)."""
    counts = []
    while sum(counts) < total:
        counts.append(int(rng.integers(low, high + 1)))
    excess = sum(counts) - total
    while excess > 0:  # take signers away from random meanings that have more than `low`
        reducible = [i for i, n in enumerate(counts) if n > low]
        if not reducible:
            counts[-1] -= excess
            break
        counts[int(rng.choice(reducible))] -= 1
        excess -= 1
    return [n for n in counts if n > 0]


def choose_signers(rng: np.random.Generator, count: int, num_signers: int, lead_chance: float,
                   distinct: bool = True) -> list[int]:
    """`count` signer indices for one meaning. Signer 0 (the lead) takes part with probability `lead_chance`
    (None: like everyone else); the others are drawn uniformly, different people when `distinct`."""
    if lead_chance is None:
        return [int(s) for s in rng.choice(num_signers, count, replace=not distinct and count > num_signers)]
    if not distinct:
        return [0 if rng.random() < lead_chance else 1 + int(rng.integers(num_signers - 1)) for _ in range(count)]
    lead = rng.random() < lead_chance
    others = rng.choice(np.arange(1, num_signers), count - int(lead), replace=False) if count > int(lead) else []
    return ([0] if lead else []) + [int(s) for s in others]


@dataclass
class CorpusPlan:
    splits: dict[str, list[SynthVideoSource]]
    signers: list[SignerStyle]
    vocabulary: list[str]  # the signs of the training samples
    info: dict = field(default_factory=dict)


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    """Decide every sample (meaning, signs, text, signer, render seed) of every split; renders nothing."""
    config.validate()
    count_rng = np.random.default_rng(stable_seed("corpus", config.seed))
    meaning_rng = np.random.default_rng(stable_seed("sentences", config.seed))
    text_rng = np.random.default_rng(stable_seed("translations", config.seed))
    signer_rng = np.random.default_rng(stable_seed("signers", config.seed))
    drop_rng = np.random.default_rng(stable_seed("drops", config.seed))
    order_rng = np.random.default_rng(stable_seed("order", config.seed))
    signers = [make_signer(i, config.seed, config.signer_variation) for i in range(config.num_signers)]
    low, high = config.signers_per_sentence
    repeats, times = config.repeat_sentences if config.repeat_sentences[1] > 0 else (0, 0)
    counts = {
        "train": signer_counts(count_rng, config.train - repeats * times, low, high),
        "dev": signer_counts(count_rng, config.dev, low, high),
        "test": signer_counts(count_rng, config.test, low, high),
    }
    needed = {split: len(split_counts) for split, split_counts in counts.items()}
    drawer = None
    if config.sentences_file:
        where = config.sentences_file
        meanings = file_meanings(read_sentences(config.sentences_file), meaning_rng, repeats, needed)
    else:
        where = f"the grammar restricted to {config.vocab_size} signs of {config.min_signs}-{config.max_signs}-sign sentences"
        meanings, drawer = grammar_meanings(config, meaning_rng, text_rng, needed)

    def lead_chance(split_counts: list[int]) -> float | None:
        # Signer 0 in a share q of the meanings with k signers each signs q / mean(k) of the samples.
        if config.lead_signer_share <= 0 or config.num_signers < 2:
            return None
        return min(1.0, config.lead_signer_share * (float(np.mean(split_counts)) if split_counts else 1.0))

    def record(planned: PlannedMeaning, signer: int) -> tuple[PlannedMeaning, int, str, tuple[str, ...]]:
        text = planned.text
        retranslate = planned.repeated or (config.retranslate_rate > 0 and text_rng.random() < config.retranslate_rate)
        if retranslate and planned.meaning is not None:
            fresh = drawer.translate(planned.meaning)
            if drawer.claim(fresh, planned.meaning_id):  # a text another meaning says would make a false twin
                text = fresh
        return planned, signer, text, planned.signed(drop_rng, config.drop_rate)

    samples: dict[str, list[tuple[PlannedMeaning, int, str, tuple[str, ...]]]] = {split: [] for split in SPLITS}
    for planned in meanings["repeated"]:
        chance = config.lead_signer_share if config.lead_signer_share > 0 and config.num_signers > 1 else None
        for signer in choose_signers(signer_rng, times, config.num_signers, chance, distinct=False):
            samples["train"].append(record(planned, signer))
    for split in SPLITS:
        chance = lead_chance(counts[split])
        for planned, count in zip(meanings[split], counts[split]):
            for signer in choose_signers(signer_rng, count, config.num_signers, chance):
                samples[split].append(record(planned, signer))
        wanted = getattr(config, split)
        if len(samples[split]) < wanted:
            if split != "train" and not samples[split]:
                more = "give more sentences" if config.sentences_file else "raise --vocab-size"
                raise ValueError(f"{where}: no unused meaning made only of training signs is left for {split}; "
                                 f"{more}, lower --train, or set --{split} 0")
            log.warning("%s gives too few distinct meanings: %s has %d samples, not %d",
                        where, split, len(samples[split]), wanted)
    train_signs = sorted(dict.fromkeys(sign for _, _, _, signs in samples["train"] for sign in signs))

    splits = {}
    for split in SPLITS:
        planned_samples = samples[split]
        order = order_rng.permutation(len(planned_samples))  # a meaning's signers are not adjacent, as in a real corpus
        splits[split] = [
            SynthVideoSource(
                name=f"synth/{split}/{sample_id:06d}",
                text=planned_samples[index][2],
                signer=signers[planned_samples[index][1]].name,
                fps=float(config.fps),
                gloss=" ".join(planned_samples[index][3]),
                signs=planned_samples[index][3],
                meaning_id=planned_samples[index][0].meaning_id,
                style=signers[planned_samples[index][1]],
                frame_size=config.frame_size,
                frames_per_sign=config.frames_per_sign,
                transition_frames=config.transition_frames,
                render_seed=stable_seed("render", config.seed, split, sample_id),
            )
            for sample_id, index in enumerate(order.tolist())
        ]
    splits = {split: sources for split, sources in splits.items() if sources}
    info = corpus_info(config, splits, train_signs)
    return CorpusPlan(splits, signers, train_signs, info)


def corpus_info(config: SynthConfig, splits: dict[str, list[SynthVideoSource]], vocabulary: list[str]) -> dict:
    """What corpus.json records about the generator (the writer adds counts, sizes and its own settings),
    including every sample's ground truth (gloss sequence, meaning id), in sample-id order."""
    per_split = {}
    for split, sources in splits.items():
        texts = [normalize_text(src.text) for src in sources]
        per_sentence = np.unique(texts, return_counts=True)[1]
        per_split[split] = dict(
            samples=len(sources),
            sentences=len(per_sentence),
            meanings=len(dict.fromkeys(src.meaning_id for src in sources)),
            samples_per_sentence_max=int(per_sentence.max()),
            samples_with_same_text_twin=int(per_sentence[per_sentence > 1].sum()),
            frames_mean=round(float(np.mean([
                sentence_length(len(src.signs), config.frames_per_sign, config.transition_frames, src.style.speed)
                for src in sources])), 1),
        )
    words = dict.fromkeys(word for src in splits.get("train", []) for word in normalize_text(src.text).split())
    return dict(
        generator="sharded_data.synth",
        preset=config.preset,
        settings=asdict(config),
        vocabulary_size=len(vocabulary),
        vocabulary=vocabulary,
        text_vocabulary_size=len(words),
        signers=sorted(dict.fromkeys(src.signer for sources in splits.values() for src in sources)),
        splits=per_split,
        ground_truth={split: dict(gloss=[src.gloss for src in sources], meaning_id=[src.meaning_id for src in sources])
                      for split, sources in splits.items()},
    )


def pair_samples(sources: list[SynthVideoSource]) -> list[PairSample]:
    """The ground truth of planned samples, for `sharded_data.pair_stats` (no video is rendered)."""
    return [PairSample(src.text, src.signer, src.signs, src.meaning_id) for src in sources]


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
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, help="corpus seed (meanings, texts, signers, noise); default 0")
    parser.add_argument("--video-format", choices=VIDEO_FORMATS, default="mp4")
    parser.add_argument("--sentences", metavar="FILE", help="sentences to sign, one per line (UTF-8), instead of the "
                                                             "grammar; each word is one sign")
    parser.add_argument("--vocab-size", type=int, help="signs of the built-in grammar")
    parser.add_argument("--sentence-signs", type=int, nargs=2, metavar=("MIN", "MAX"), help="signs per sentence")
    parser.add_argument("--paraphrases", type=int, help="spoken templates per meaning frame (1 = the usual phrasing only)")
    parser.add_argument("--paraphrase-rate", type=float, help="chance that a translation is not in the usual template")
    parser.add_argument("--synonym-rate", type=float, help="chance that a concept is translated by a synonym")
    parser.add_argument("--drop-rate", type=float, help="chance that a signer drops an optional sign")
    parser.add_argument("--retranslate-rate", type=float,
                        help="chance that a recording gets its own translation (hidden twins: same signs, other text)")
    parser.add_argument("--variant-rate", type=float, help="chance that a meaning is an earlier one with one sign changed")
    parser.add_argument("--train", type=int, help="train samples")
    parser.add_argument("--dev", type=int, help="dev samples (0 = no dev split)")
    parser.add_argument("--test", type=int, help="test samples (0 = no test split)")
    parser.add_argument("--frame-size", type=parse_frame_size, metavar="HxW")
    parser.add_argument("--fps", type=float)
    parser.add_argument("--frames-per-sign", type=int)
    parser.add_argument("--num-signers", type=int)
    parser.add_argument("--signers-per-sentence", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="different signers per meaning (raises --num-signers to MAX if the preset has fewer)")
    parser.add_argument("--lead-signer-share", type=float, help="share of the samples signed by signer00 (0 = like the others)")
    parser.add_argument("--repeat-sentences", type=int, nargs=2, metavar=("K", "R"),
                        help="K greetings recorded R times each in train (with --sentences the first K of "
                             "the shuffled file); 0 0 = off. Default: the preset's, R capped at train/(10 K) with --train")
    parser.add_argument("--signer-variation", type=float, help="how different signers look and move (0 = alike)")
    parser.add_argument("--num-workers", type=int, default=2, help="processes rendering/encoding shards")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    if args.sentences and args.vocab_size is not None:
        raise ValueError("--vocab-size applies to the built-in grammar; with --sentences the file's words are the vocabulary")
    overrides = dict(
        seed=args.seed, sentences_file=args.sentences, vocab_size=args.vocab_size, train=args.train, dev=args.dev,
        test=args.test, frame_size=args.frame_size, fps=args.fps, frames_per_sign=args.frames_per_sign,
        num_signers=args.num_signers, signers_per_sentence=args.signers_per_sentence,
        repeat_sentences=args.repeat_sentences, signer_variation=args.signer_variation, paraphrases=args.paraphrases,
        paraphrase_rate=args.paraphrase_rate,
        synonym_rate=args.synonym_rate, drop_rate=args.drop_rate, retranslate_rate=args.retranslate_rate,
        variant_rate=args.variant_rate, lead_signer_share=args.lead_signer_share,
    )
    if args.sentence_signs:
        overrides.update(min_signs=args.sentence_signs[0], max_signs=args.sentence_signs[1])
    config = replace(PRESETS[args.preset], **{key: value for key, value in overrides.items() if value is not None})
    if args.train is not None and args.repeat_sentences is None:
        # The preset's greeting repeats are a few percent of its train split; keep them at most a tenth of a
        # smaller one (--train 32 with 2 greetings x 12 would be mostly greetings).
        repeats, times = config.repeat_sentences
        if repeats and times:
            config.repeat_sentences = (repeats, min(times, max(2, config.train // (10 * repeats))))
    if args.signers_per_sentence and args.num_signers is None:
        # Asking for more signers per meaning than the preset has signers means: use that many signers.
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
