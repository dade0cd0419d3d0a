"""Ground truth for every pair (sharded_data.pair_stats): pair kinds, exact statistics on constructed corpora,
batch shares, and reading glosses from corpus.json or from the samples' json members."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from sharded_data.pair_stats import (
    PairKinds,
    PairSample,
    format_table,
    load_pair_samples,
    pair_statistics,
    text_unit,
    within_one_edit,
)
from sharded_data.sources import VideoSource
from sharded_data.write import write_corpus


def test_within_one_edit():
    """Broken variant tried: insertion checked only at the end -> ('A','X','B') vs ('A','B') failed."""
    a = ("TOMORROW", "NORTH", "RAIN")
    assert within_one_edit(a, ("TOMORROW", "SOUTH", "RAIN"))  # substitution
    assert within_one_edit(a, ("TOMORROW", "NORTH", "IX", "RAIN"))  # insertion in the middle
    assert within_one_edit(a, ("NORTH", "RAIN")) and within_one_edit(a, ("TOMORROW", "NORTH"))  # deletions at the ends
    assert within_one_edit(("X",) + a, a)
    assert not within_one_edit(a, a)  # the same sequence is a hidden twin, not one sign apart
    assert not within_one_edit(a, ("TODAY", "SOUTH", "RAIN"))  # two substitutions
    assert not within_one_edit(a, ("NORTH", "RAIN", "TOMORROW"))  # a move is two edits
    assert not within_one_edit(a, ("RAIN",))


def test_pair_kinds_in_priority_order():
    samples = [
        PairSample("tomorrow rain in the north", "s1", ("TOMORROW", "NORTH", "RAIN")),
        PairSample("Tomorrow rain in the  north", "s2", ("TOMORROW", "NORTH", "IX", "RAIN")),  # same text
        PairSample("rain up north tomorrow", "s1", ("TOMORROW", "NORTH", "RAIN")),  # same glosses, other text
        PairSample("tomorrow rain in the south", "s3", ("TOMORROW", "SOUTH", "RAIN")),  # one sign apart
        PairSample("sun over the alps", "s1", ("ALPS", "SUN")),  # same signer as 0
        PairSample("ten degrees in bonn", "s4", ("BONN", "TEN", "DEGREE")),
        PairSample("fog in kiel", "unknown", ("KIEL", "FOG")),
        PairSample("snow in ulm", None, ("ULM", "SNOW")),
    ]
    kinds = PairKinds(samples)
    assert kinds.kind(0, 1) == "exact_twin" and kinds.kind(1, 2) == "one_sign_apart"  # IX dropped
    assert kinds.kind(0, 2) == "hidden_twin" and kinds.kind(0, 3) == "one_sign_apart"
    assert kinds.kind(0, 4) == "same_signer" and kinds.kind(0, 5) == "unrelated"
    assert kinds.kind(6, 7) == "unrelated"  # unknown signers are not "the same signer"
    no_gloss = PairKinds([PairSample(s.text, s.signer) for s in samples])
    assert no_gloss.kind(0, 2) == "same_signer" and no_gloss.kind(0, 3) == "unrelated" and not no_gloss.has_gloss


def test_statistics_are_exact_on_a_small_corpus():
    """Every pair is enumerated below max_pairs: the numbers are exact. 4 samples, 6 pairs."""
    samples = [PairSample("a b c d", "s1", ("A", "B")), PairSample("a b c d", "s2", ("A", "B", "IX")),
               PairSample("a b x y", "s1", ("A", "B")), PairSample("p q", "s1", ("P", "Q"))]
    stats = pair_statistics(samples, batches=10, batch_size=16)
    assert stats["pairs"] == 6 and not stats["pairs_sampled"] and stats["text_unit"] == "words"
    # pairs of different texts: (0,2) (1,2): 2/6 each; (0,3) (1,3) (2,3): 0
    assert stats["text_jaccard_mean"] == pytest.approx((1 / 3 + 1 / 3) / 5)
    assert stats["text_jaccard_ge_half"] == 0.0
    # (0,1) exact, (0,2) hidden, (1,2) one sign apart (IX), (0,3) (2,3) same signer, (1,3) unrelated
    assert stats["pair_share"] == pytest.approx({"exact_twin": 1 / 6, "hidden_twin": 1 / 6, "one_sign_apart": 1 / 6,
                                                 "same_signer": 2 / 6, "unrelated": 1 / 6})
    # gloss Jaccard over the 5 pairs of different texts: (0,2) 1, (1,2) 2/3, others 0
    assert stats["gloss_jaccard_mean"] == pytest.approx((1 + 2 / 3) / 5)
    assert stats["same_signer_share"] == pytest.approx(3 / 6)
    assert stats["samples_per_sentence"] == {"mode": 1, "min": 1, "median": 1.0, "max": 2}
    assert stats["signers"] == 2 and stats["largest_signer_share"] == 0.75 and stats["meanings"] is None
    assert stats["batch_holding"] is None  # fewer samples than a batch


def test_batch_shares():
    """Batches of 2 from 2 hidden-twin pairs: 2 of the 6 possible batches are twins; the neighbour-member
    share equals the share of such batches."""
    samples = [PairSample(f"text {i}", f"s{i}", ("A", "B") if i < 2 else ("C", "D")) for i in range(4)]
    stats = pair_statistics(samples, batches=3000, batch_size=2, seed=3)
    assert stats["batch_holding"]["hidden_twin"] == pytest.approx(1 / 3, abs=0.03)
    assert stats["batch_neighbour_members"] == pytest.approx(stats["batch_holding"]["hidden_twin"])
    assert stats["batch_holding"]["unrelated"] == pytest.approx(2 / 3, abs=0.03)
    again = pair_statistics(samples, batches=3000, batch_size=2, seed=3)
    assert again == stats  # seeded


def test_sampled_pairs_and_characters_for_chinese():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    samples = [PairSample(" ".join(rng.choice(words, 5)), f"s{i % 3}") for i in range(800)]
    stats = pair_statistics(samples, max_pairs=5000, batches=50)
    assert stats["pairs"] == 5000 and stats["pairs_sampled"] and stats["gloss_jaccard_mean"] is None
    assert stats["same_signer_share"] == pytest.approx(1 / 3, abs=0.03)
    assert text_unit(["今天天气很好", "明天下雨"]) == "characters" and text_unit(["guten abend"]) == "words"
    chinese = pair_statistics([PairSample("今天下雨"), PairSample("明天下雪"), PairSample("今天下雨")], batches=0)
    assert chinese["text_unit"] == "characters"
    assert chinese["text_jaccard_mean"] == pytest.approx(((2 / 6) + (2 / 6)) / 2)  # {今天下雨} vs {明天下雪}: 天下 shared


def test_table_says_na_without_glosses_and_signers():
    table = format_table({"bare": pair_statistics([PairSample(f"t {i % 5}") for i in range(40)], batches=20)})
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert lines["gloss overlap of a random pair, mean"].endswith("| n/a |")
    assert lines["hidden twins (same glosses, other text), share of pairs"].endswith("| n/a |")
    assert lines["signers"].endswith("| n/a |") and lines["same-signer share of random pairs"].endswith("| n/a |")
    assert "random batches of 16 holding an exact twin" in table


@dataclass
class Still(VideoSource):
    def load_frames(self) -> np.ndarray:
        return np.full((3, 16, 16, 3), 90, np.uint8)


def _shards(tmp_path, gloss: bool = True):
    sources = {"train": [Still(f"v{i}", f"text {i % 3}", signer=f"s{i % 2}", gloss=f"G{i % 3} IX" if gloss else None)
                         for i in range(6)]}
    write_corpus(tmp_path, sources, video_format="npy", samples_per_shard=4, num_workers=1, progress=False)
    return tmp_path


def test_glosses_from_json_members(tmp_path):
    """The writer stores a source's glosses (PHOENIX `orth`) in its json member; they are read member by member."""
    samples = load_pair_samples(_shards(tmp_path / "with"), "train")
    assert [s.gloss for s in samples] == [(f"G{i % 3}", "IX") for i in range(6)]
    assert [s.meaning_id for s in samples] == [None] * 6  # a real corpus knows no meanings
    assert [s.signer for s in samples] == [f"s{i % 2}" for i in range(6)]
    assert all(s.gloss is None for s in load_pair_samples(_shards(tmp_path / "without", gloss=False), "train"))


def test_glosses_from_corpus_json_must_match_the_shards(tmp_path):
    shard_dir = _shards(tmp_path)
    corpus = json.loads((shard_dir / "corpus.json").read_text())
    corpus["generator"] = {"ground_truth": {"train": {"gloss": ["A B"] * 6, "meaning_id": list(range(6))}}}
    (shard_dir / "corpus.json").write_text(json.dumps(corpus))
    assert load_pair_samples(shard_dir, "train")[5] == PairSample("text 2", "s1", ("A", "B"), 5)
    corpus["generator"]["ground_truth"]["train"]["gloss"] = ["A B"] * 5
    (shard_dir / "corpus.json").write_text(json.dumps(corpus))
    with pytest.raises(ValueError, match="has 5 entries for 6 samples"):
        load_pair_samples(shard_dir, "train")


def test_phoenix_sources_keep_the_orth_gloss_column(tmp_path):
    """The PHOENIX-2014T converter keeps `orth` (the real glosses) as the sample's ground truth; a corpus CSV
    without glosses leaves it unset. (A made-up release layout: no real data needed.)"""
    from PIL import Image

    from sharded_data.sources import PHOENIX_ANNOTATIONS, PHOENIX_FRAMES, phoenix_sources

    for name in ("clip-1", "clip-2"):
        folder = tmp_path / PHOENIX_FRAMES / "test" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((20, 16, 3), 100, np.uint8)).save(folder / "images0001.png")
    annotations = tmp_path / PHOENIX_ANNOTATIONS
    annotations.mkdir(parents=True)
    (annotations / "PHOENIX-2014-T.test.corpus.csv").write_text(
        "name|video|start|end|speaker|orth|translation\n"
        "clip-1|clip-1/1/*.png|-1|-1|Signer04|REGEN NORD  IX|im norden regnet es\n"
        "clip-2|clip-2/1/*.png|-1|-1|Signer01| |guten abend\n", encoding="utf-8")
    first, second = phoenix_sources(tmp_path)["test"]
    assert first.gloss == "REGEN NORD  IX" and first.ground_truth() == {"gloss": "REGEN NORD  IX"}
    assert second.gloss is None and second.ground_truth() == {}
    assert PairSample(first.text, first.signer, tuple(first.gloss.split())).gloss == ("REGEN", "NORD", "IX")


def test_sample_meta_ground_truth_fields_are_optional():
    """json members without gloss/meaning id (every corpus written before) read as before and keep their
    bytes; with them, they round-trip."""
    from sharded_data.format import SampleMeta

    plain = SampleMeta(3, 1, "s1", 20, 25.0, "manifest", "train", "v3")
    assert b"gloss" not in plain.to_json_bytes()
    old = b'{"sample_id": 3, "sentence_id": 1, "signer": "s1", "n_frames": 20, "fps": 25.0, "source": "manifest", ' \
          b'"split": "train", "name": "v3"}'
    assert SampleMeta.from_json_bytes(old) == plain and plain.to_json_bytes() == old
    annotated = SampleMeta(3, 1, "s1", 20, 25.0, "synthetic", "train", "v3", gloss="RAIN NORTH", meaning_id=7)
    assert SampleMeta.from_json_bytes(annotated.to_json_bytes()) == annotated
