"""The synthetic sign corpus: deterministic rendering and planning (across processes), the meaning -> signs ->
text layers, the effect of every knob, the study presets' pair statistics, user text, CLI."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sharded_data.format import decode_video, load_index, normalize_text
from sharded_data.grammar import FRAMES, GREETINGS, Grammar, Meaning, fixed_signs, greeting_signs
from sharded_data.pair_stats import pair_statistics
from sharded_data.signs import make_signer, render_sentence, sentence_length, sign_for_word, stable_seed
from sharded_data.synth import (
    PRESETS,
    SynthConfig,
    config_from_args,
    main,
    pair_samples,
    parse_args,
    plan_corpus,
    sign_words,
)

REPO = Path(__file__).resolve().parents[1]
# A corpus small enough to plan and render in a blink, with the tiny preset's look.
SMALL = replace(PRESETS["tiny"], train=120, dev=24, test=24, repeat_sentences=(2, 6))
# The same size with every text and signing knob on.
FREE = replace(SMALL, paraphrases=3, synonym_rate=0.3, drop_rate=0.3)


def texts_and_signers(plan):
    return {split: [(src.text, src.signer, src.gloss, src.meaning_id, src.render_seed) for src in sources]
            for split, sources in plan.splits.items()}


def by_meaning(sources):
    groups = collections.defaultdict(list)
    for src in sources:
        groups[src.meaning_id].append(src)
    return groups


# ----------------------------------------------------------------------------------------- rendering


def test_render_is_deterministic_and_seed_dependent():
    style = make_signer(3, seed=0)
    signs = ["TOMORROW", "RAIN", "NORTH", "IX", "HEAVY"]
    first = render_sentence(signs, style, (32, 32), 5, 1, seed=11)
    again = render_sentence(signs, style, (32, 32), 5, 1, seed=11)
    other_seed = render_sentence(signs, style, (32, 32), 5, 1, seed=12)
    assert first.dtype == np.uint8 and first.shape[1:] == (32, 32, 3)
    # rest + 5 signs (frames per sign x signer speed, +-1 each) + 6 transitions + rest
    expected = sentence_length(5, 5, 1, style.speed)
    assert expected - 5 <= len(first) <= expected + 5 and expected == 2 + 5 * round(5 * style.speed) + 6
    np.testing.assert_array_equal(first, again)
    assert len(first) != len(other_seed) or np.abs(first.astype(int) - other_seed).mean() > 1.0


def test_non_square_frames_and_signers_look_different():
    video = render_sentence(["SUN"], make_signer(0, 0), (48, 64), 5, 1, seed=0)
    assert video.shape[1:] == (48, 64, 3)
    a = render_sentence(["SUN"], make_signer(0, 0), (32, 32), 5, 0, seed=0).astype(float)
    b = render_sentence(["SUN"], make_signer(1, 0), (32, 32), 5, 0, seed=0).astype(float)
    n = min(len(a), len(b))
    assert np.abs(a[:n] - b[:n]).mean() > 10  # other colours, background, body position


def test_signer_variation_is_the_signer_nuisance():
    """Knob signer_variation: at 0 two signers render a sign almost alike (same look, no noise), and the
    difference grows with the knob. Broken variant tried: variation scaling only geometry (colours kept)
    -> the difference at 0 stayed ~60 grey levels and the test failed."""
    def difference(variation: float) -> float:
        a, b = (render_sentence(["SUN"], make_signer(i, 0, variation), (32, 32), 5, 0, seed=0).astype(float)
                for i in (0, 1))
        n = min(len(a), len(b))
        return float(np.abs(a[:n] - b[:n]).mean())

    alike, half, full = difference(0.0), difference(0.5), difference(1.0)
    assert alike < 3 < half < full
    assert make_signer(2, 0, 1.0) == make_signer(2, 0, 1.0) and make_signer(2, 0, 2.0).noise > make_signer(2, 0, 1.0).noise


def test_signs_are_pure_functions_of_the_gloss_and_distinct():
    assert sign_for_word("Regen") == sign_for_word("REGEN")
    signs = list(dict.fromkeys(Grammar().signs() + greeting_signs(len(GREETINGS))))
    assert len(signs) > 180
    drawn = [sign_for_word(sign) for sign in signs]
    assert len(set(drawn)) == len(drawn), "two glosses share a sign"


def test_nearest_neighbour_recognizes_signs_across_signers():
    """Learnability: one rendering per sign by 3 signers is enough for a nearest-neighbour classifier to name
    the sign made by 3 other signers, using only a signer-independent feature (motion energy)."""
    vocabulary = plan_corpus(replace(SMALL, dev=0, test=0)).vocabulary
    assert 40 <= len(vocabulary) <= 60

    def feature(video: np.ndarray, steps: int = 8) -> np.ndarray:
        video = video.astype(np.float32)
        moving = np.abs(video - np.median(video, axis=0, keepdims=True)).mean(-1)  # what moves, colour-free
        position = np.linspace(0, len(video) - 1, steps)
        low = np.floor(position).astype(int)
        high, weight = np.minimum(low + 1, len(video) - 1), (position - low)[:, None, None]
        resampled = moving[low] * (1 - weight) + moving[high] * weight  # signers differ in speed
        pooled = resampled.reshape(steps, 16, 2, 16, 2).mean((2, 4))
        pooled = pooled.ravel() - pooled.mean()
        return pooled / np.linalg.norm(pooled)

    signers = [make_signer(i, seed=99) for i in range(6)]
    features = {
        (s, w): feature(render_sentence([sign], signers[s], (32, 32), 5, 1, seed=stable_seed(s, sign)))
        for s in range(6) for w, sign in enumerate(vocabulary)
    }
    reference = np.stack([features[s, w] for s in range(3) for w in range(len(vocabulary))])
    reference_labels = np.array([w for s in range(3) for w in range(len(vocabulary))])
    queries = np.stack([features[s, w] for s in range(3, 6) for w in range(len(vocabulary))])
    query_labels = np.array([w for s in range(3, 6) for w in range(len(vocabulary))])
    predicted = reference_labels[np.argmax(queries @ reference.T, axis=1)]
    accuracy = float((predicted == query_labels).mean())
    assert accuracy > 0.8, f"nearest-neighbour sign accuracy {accuracy:.2f} (chance {1 / len(vocabulary):.3f})"


# ------------------------------------------------------------------------------- meanings and grammar


@pytest.mark.parametrize("vocab_size", [30, 60, 150])
def test_restricted_grammar_has_the_asked_number_of_signs(vocab_size):
    """Knob vocab_size: the restricted grammar's signs (greetings' included) number about vocab_size."""
    grammar = Grammar().with_lengths(3, 7).restricted(vocab_size, reserved=greeting_signs(2))
    size = len(dict.fromkeys(grammar.signs() + greeting_signs(2)))
    assert vocab_size - 8 <= size <= vocab_size
    rng = np.random.default_rng(0)
    for _ in range(200):
        meaning = grammar.sample(rng)
        assert 3 <= len(meaning.glosses()) <= 7
        assert all(sign in grammar.signs() for sign in meaning.glosses())


def test_too_small_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size 3 is too small"):
        Grammar().restricted(3)


def test_every_spoken_template_says_every_role_once():
    Grammar()  # validates the built-in frames
    bad = replace(FRAMES[0], texts=("{DAY} {ADJ}",))
    with pytest.raises(ValueError, match="must use each of"):
        Grammar(frames=(bad,))


def test_glosses_are_signed_order_without_articles_and_optional_signs_drop():
    """The sign layer: gloss order differs from the text's, articles are not signed, one sign per synonym
    group, and optional signs (IX) drop at the asked rate (knob drop_rate)."""
    frame = next(f for f in FRAMES if f.name == "day_region_weather")  # "{DAY} {REGION} ?IX {WEATHER} {AMOUNT}"
    slots = Grammar().slots
    meaning = Meaning(frame, (("DAY", slots["DAY"][0]), ("REGION", slots["REGION"][0]),
                              ("WEATHER", slots["WEATHER"][0]), ("AMOUNT", slots["AMOUNT"][0])))
    assert meaning.glosses() == ("TOMORROW", "NORTH", "IX", "RAIN", "HEAVY")
    rng = np.random.default_rng(0)
    assert meaning.translate(rng) == "tomorrow heavy rain across the north"
    dropped = [len(meaning.glosses(rng, 0.3)) == 4 for _ in range(2000)]
    assert 0.26 < np.mean(dropped) < 0.34
    assert all(meaning.glosses(rng, 0.0) == meaning.glosses() for _ in range(50))


def test_paraphrases_and_synonyms_make_free_translations():
    """Knobs paraphrases, paraphrase_rate and synonym_rate: 1 template and no synonyms give one literal text
    per meaning; with 3 templates the usual one keeps 1 - paraphrase_rate of the translations and the other
    two share the rest; synonyms replace usual words at the asked rate. Broken variant tried: the other
    templates drawn with the usual one included (rate not honoured) -> the share check failed."""
    frame = FRAMES[0]  # region_quality: DAY, REGION, ADJ
    slots = Grammar().slots
    meaning = Meaning(frame, (("DAY", slots["DAY"][0]), ("REGION", slots["REGION"][0]), ("ADJ", slots["ADJ"][0])))
    rng = np.random.default_rng(1)
    assert {meaning.translate(rng, 1, 0.0, 0.9) for _ in range(100)} == {"tomorrow sunny in the north"}
    for rate in (0.2, 0.6):
        texts = collections.Counter(meaning.translate(rng, 3, 0.0, rate) for _ in range(3000))
        counts = [texts[template.format(DAY="tomorrow", REGION="the north", ADJ="sunny")] for template in frame.texts]
        assert sum(counts) == 3000
        np.testing.assert_allclose(np.array(counts) / 3000, [1 - rate, rate / 2, rate / 2], atol=0.03)
    synonyms = [meaning.translate(rng, 1, 0.4) for _ in range(3000)]
    usual = np.mean(["sunny" in text for text in synonyms])
    assert 0.55 < usual < 0.65  # ADJ SUNNY = sunny|bright: the synonym in 40% of the texts


# ----------------------------------------------------------------------------------- corpus structure


def test_plan_is_deterministic_and_seed_dependent():
    first, again = plan_corpus(FREE), plan_corpus(FREE)
    assert texts_and_signers(first) == texts_and_signers(again)
    np.testing.assert_array_equal(first.splits["dev"][5].load_frames(), again.splits["dev"][5].load_frames())
    other = plan_corpus(replace(FREE, seed=1))
    assert [s.text for s in other.splits["train"]] != [s.text for s in first.splits["train"]]
    assert not np.array_equal(first.splits["train"][0].load_frames(), other.splits["train"][0].load_frames())


def _digest_tree(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file()}


def test_shards_are_byte_identical_across_processes_and_hash_seeds(tmp_path):
    """The same command in two processes with different PYTHONHASHSEED writes byte-identical shards,
    indexes and corpus.json. Broken variant tried: grammar.Grammar.sample drawing the slot types in
    `set(...)` order (the old code) -> texts differed between the hash seeds and this test failed."""
    digests = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"hash{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "sharded_data.synth", "--out", str(out), "--preset", "dense-neighbours",
                        "--train", "48", "--dev", "12", "--test", "12", "--frame-size", "16", "--drop-rate", "0.3",
                        "--repeat-sentences", "2", "4", "--lead-signer-share", "0.3", "--num-workers", "2",
                        "--samples-per-shard", "16", "--no-progress"],
                       cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
        digests.append(_digest_tree(out))
    assert digests[0] == digests[1]
    assert any(name.startswith("shards-train") for name in digests[0]) and "corpus.json" in digests[0]


def test_counts_names_signers_and_ground_truth():
    plan = plan_corpus(FREE)
    assert {split: len(sources) for split, sources in plan.splits.items()} == {"train": 120, "dev": 24, "test": 24}
    assert plan.splits["train"][7].name == "synth/train/000007"
    assert {src.signer for sources in plan.splits.values() for src in sources} <= {f"signer{i:02d}" for i in range(8)}
    assert len(plan.info["vocabulary"]) == plan.info["vocabulary_size"]
    assert plan.info["settings"]["signers_per_sentence"] == (2, 4)
    truth = plan.info["ground_truth"]["dev"]
    assert truth["gloss"] == [src.gloss for src in plan.splits["dev"]]
    assert truth["meaning_id"] == [src.meaning_id for src in plan.splits["dev"]]
    src = plan.splits["train"][0]
    assert src.ground_truth() == {"gloss": " ".join(src.signs), "meaning_id": src.meaning_id}
    assert src.gloss.isupper() and src.text.islower()


def test_same_meaning_structure_csl_daily_regime():
    """Knob signers_per_sentence: each meaning is signed by 2-4 different signers, all with one text."""
    plan = plan_corpus(SMALL)
    greetings = {normalize_text(text) for frame in GREETINGS[:2] for text in frame.texts}
    for split, sources in plan.splits.items():
        for meaning_id, members in by_meaning(sources).items():
            if normalize_text(members[0].text) in greetings:
                assert split == "train" and len(members) == 6
                continue
            signers = [src.signer for src in members]
            assert 2 <= len(signers) <= 4, (split, meaning_id, signers)
            assert len(set(signers)) == len(signers), "one meaning is signed by different signers"
            assert len({src.text for src in members}) == 1


def test_lead_signer_share():
    """Knob lead_signer_share: signer00 signs about that share of the samples (at most one recording per
    meaning); 0 leaves the signers balanced."""
    one_each = replace(SMALL, train=600, repeat_sentences=(0, 0), signers_per_sentence=(1, 1), num_signers=9)
    for share in (0.0, 0.3):
        plan = plan_corpus(replace(one_each, lead_signer_share=share))
        counts = collections.Counter(src.signer for src in plan.splits["train"])
        lead = counts["signer00"] / 600
        assert abs(lead - (share or 1 / 9)) < 0.05, (share, lead)
    three = plan_corpus(replace(SMALL, train=600, repeat_sentences=(0, 0), signers_per_sentence=(3, 3), num_signers=10,
                                lead_signer_share=0.3))
    assert collections.Counter(src.signer for src in three.splits["train"])["signer00"] / 600 == pytest.approx(0.3, abs=0.04)


def test_repeated_greetings_phoenix_regime():
    """Knob repeat_sentences: K greetings recorded R times each; with paraphrases each recording takes one
    of the greeting's spoken forms (exact twins among equal forms, hidden twins between them)."""
    config = replace(SMALL, signers_per_sentence=(1, 1), repeat_sentences=(3, 20), num_signers=9)
    plan = plan_corpus(config)
    counts = collections.Counter(normalize_text(src.text) for src in plan.splits["train"])
    repeated = [text for text, n in counts.items() if n > 1]
    assert sorted(repeated) == sorted(normalize_text(frame.texts[0]) for frame in GREETINGS[:3])
    assert all(counts[text] == 20 for text in repeated)
    assert sum(counts.values()) == 120 and len(counts) == 120 - 3 * 20 + 3
    # 20 recordings by 9 signers: signers repeat, but the recordings differ (own render seed)
    seeds = [src.render_seed for src in plan.splits["train"] if normalize_text(src.text) in repeated]
    assert len(set(seeds)) == len(seeds)
    free = plan_corpus(replace(config, paraphrases=3))
    greeting = [src for src in free.splits["train"] if src.meaning_id == 0]
    assert len(greeting) == 20 and len({src.text for src in greeting}) > 1 and len({src.gloss for src in greeting}) == 1


def test_held_out_splits_are_new_meanings_of_training_signs():
    plan = plan_corpus(FREE)
    train_meanings = {src.meaning_id for src in plan.splits["train"]}
    train_texts = {normalize_text(src.text) for src in plan.splits["train"]}
    train_signs = {sign for src in plan.splits["train"] for sign in src.signs}
    for split in ("dev", "test"):
        for src in plan.splits[split]:
            assert set(src.signs) <= train_signs, f"{split} sign unseen in train: {src.gloss}"
            assert normalize_text(src.text) not in train_texts and src.meaning_id not in train_meanings
    assert not {src.meaning_id for src in plan.splits["dev"]} & {src.meaning_id for src in plan.splits["test"]}


def test_no_two_meanings_share_a_text():
    """A text says one meaning: otherwise two different signings would get one sentence id."""
    plan = plan_corpus(replace(FREE, retranslate_rate=0.5, train=600))
    owner = {}
    for sources in plan.splits.values():
        for src in sources:
            assert owner.setdefault(normalize_text(src.text), src.meaning_id) == src.meaning_id


def test_sentence_length_knob():
    """Knob min_signs/max_signs: every gloss sequence (optional signs included) has that many signs."""
    for low, high in ((3, 4), (5, 7)):
        plan = plan_corpus(replace(SMALL, min_signs=low, max_signs=high, vocab_size=120))
        lengths = [len(src.signs) for src in plan.splits["train"] if src.meaning_id >= 2]  # greetings aside
        assert low <= min(lengths) and max(lengths) <= high


def test_near_neighbour_knobs():
    """Knobs retranslate_rate (hidden twins) and variant_rate (one sign apart) raise exactly their pair
    kind. Broken variant tried: variants drawn fresh (no base meaning) -> one-sign-apart share unchanged."""
    base = replace(SMALL, train=800, repeat_sentences=(0, 0), vocab_size=80)

    def shares(config):
        stats = pair_statistics(pair_samples(plan_corpus(config).splits["train"]), max_pairs=100_000, batches=200)
        return stats["pair_share"]

    plain = shares(base)
    hidden = shares(replace(base, retranslate_rate=0.8, paraphrases=3))
    near = shares(replace(base, variant_rate=0.8))
    assert plain["hidden_twin"] == 0 and hidden["hidden_twin"] > 0.0005
    assert hidden["exact_twin"] < plain["exact_twin"]
    assert near["one_sign_apart"] > 2 * plain["one_sign_apart"]


def test_invalid_config_is_a_clear_error():
    with pytest.raises(ValueError, match="signers_per_sentence"):
        plan_corpus(replace(SMALL, signers_per_sentence=(2, 12)))
    with pytest.raises(ValueError, match="repeat_sentences"):
        plan_corpus(replace(SMALL, repeat_sentences=(10, 20)))
    with pytest.raises(ValueError, match="synonym_rate"):
        plan_corpus(replace(SMALL, synonym_rate=1.5))
    with pytest.raises(ValueError, match="lead_signer_share"):
        plan_corpus(replace(SMALL, lead_signer_share=1.0))


def test_presets_are_valid_and_documented():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, config in PRESETS.items():
        config.validate()
        assert config.preset == name and f"| `{name}`" in readme, name
    tiny = PRESETS["tiny"]
    assert tiny.frame_size == (32, 32) and 40 <= tiny.vocab_size <= 80 and (tiny.train, tiny.dev, tiny.test) == (1000, 100, 100)
    for name in ("csl-like", "phoenix-like", "dense-neighbours"):
        assert PRESETS[name].test >= 400, "the study needs at least 400 test videos"


def test_study_presets_match_their_targets():
    """The presets' pair statistics (README table): csl-like has one signer with about a third of the
    samples and ~3 samples per sentence; phoenix-like mostly one sample per sentence with repeated greetings
    and a few percent of batches holding an exact twin; dense-neighbours puts a hidden twin or a
    one-sign-apart neighbour beside 10-20% of a random batch's members."""
    stats = {name: pair_statistics(pair_samples(plan_corpus(PRESETS[name]).splits["train"]), max_pairs=50_000,
                                   batches=1000)
             for name in ("csl-like", "phoenix-like", "dense-neighbours")}
    csl, phoenix, dense = stats["csl-like"], stats["phoenix-like"], stats["dense-neighbours"]
    assert 0.3 <= csl["largest_signer_share"] <= 0.4 and csl["samples_per_sentence"]["mode"] == 3
    assert 0.13 <= csl["same_signer_share"] <= 0.22
    assert phoenix["samples_per_sentence"]["mode"] == 1 and phoenix["samples_per_sentence"]["max"] >= 10
    assert 0.01 <= phoenix["batch_holding"]["exact_twin"] <= 0.04
    assert 0.10 <= dense["batch_neighbour_members"] <= 0.20
    for column in stats.values():
        assert column["text_jaccard_mean"] <= 0.10  # PHOENIX-2014T 0.05, CSL-Daily 0.07: within a factor 2


# ---------------------------------------------------------------------------------------- user text


def test_user_sentence_file(tmp_path):
    lines = ["Der Wind weht aus Westen.", "", "Morgen Regen im Norden", "Morgen Sonne im Süden!",
             "der wind weht aus westen", "Im Norden Sonne und im Süden Regen", "Wind im Süden",
             "Morgen Wind im Westen", "Regen im Westen", "Sonne aus Norden"]
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = SynthConfig(sentences_file=str(path), train=10, dev=2, test=2, repeat_sentences=(0, 0),
                         signers_per_sentence=(2, 2), num_signers=4)
    plan = plan_corpus(config)
    file_texts = {normalize_text(line) for line in lines if line}
    train_signs = {sign for src in plan.splits["train"] for sign in src.signs}
    for sources in plan.splits.values():
        for src in sources:
            assert normalize_text(src.text) in file_texts
            assert src.signs == tuple(word.upper() for word in sign_words(src.text)) and "." not in src.gloss
    for split in ("dev", "test"):
        for src in plan.splits.get(split, []):
            assert set(src.signs) <= train_signs
    assert {split: len(sources) for split, sources in plan.splits.items()} == {"train": 10, "dev": 2, "test": 2}
    # "Der Wind weht aus Westen." and "der wind weht aus westen" are signed alike: one sentence, not two
    all_texts = {src.text for sources in plan.splits.values() for src in sources}
    assert len({sign_words(text) for text in all_texts}) == len(all_texts)
    assert "der wind weht aus westen" not in all_texts
    assert "SÜDEN" in train_signs  # words from outside the grammar, non-ASCII included
    frames = plan.splits["train"][0].load_frames()  # words outside any vocabulary get signs too
    assert frames.ndim == 4 and len(frames) > 5

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("gut\nSüden\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt:2: not UTF-8"):
        plan_corpus(replace(config, sentences_file=str(bad)))


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_writes_shards_that_match_the_plan(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["--out", str(out), "--video-format", "npy", "--train", "30", "--dev", "8", "--test", "8",
            "--frame-size", "24x32", "--repeat-sentences", "1", "4", "--num-workers", "2", "--seed", "5",
            "--paraphrases", "2", "--synonym-rate", "0.3", "--drop-rate", "0.2", "--samples-per-shard", "16",
            "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    # A second run plans the same sources (same digest), so the writer finds every shard finished.
    assert main(argv) == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["shards_written"] == 0 and rerun["shards_reused"] == 4
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["counts"] == {"train": 30, "dev": 8, "test": 8}
    assert corpus["frame_size"] == [24, 32]
    generator = corpus["generator"]
    assert generator["preset"] == "tiny" and generator["settings"]["seed"] == 5
    assert generator["settings"]["frame_size"] == [24, 32] and generator["settings"]["paraphrases"] == 2

    config = replace(PRESETS["tiny"], seed=5, train=30, dev=8, test=8, frame_size=(24, 32), repeat_sentences=(1, 4),
                     paraphrases=2, synonym_rate=0.3, drop_rate=0.2)
    plan = plan_corpus(config)
    for split, sources in plan.splits.items():
        index = load_index(out, split)
        assert index.num_samples == len(sources)
        assert index.text == [src.text for src in sources]
        assert index.signer == [src.signer for src in sources]
        assert generator["ground_truth"][split]["gloss"] == [src.gloss for src in sources]
        same_text = collections.defaultdict(set)
        for text, sentence_id in zip(index.text, index.sentence_id):
            same_text[normalize_text(text)].add(sentence_id)
        assert all(len(ids) == 1 for ids in same_text.values())
    # The frames stored by the worker processes are exactly what this process renders from the plan.
    index = load_index(out, "dev")
    with tarfile.open(out / index.shards[0].name) as tar:
        data = tar.extractfile("dev_00000003.frames.npy").read()
    np.testing.assert_array_equal(decode_video("frames.npy", data), plan.splits["dev"][3].load_frames())


def test_cli_mp4_from_user_file(tmp_path):
    path = tmp_path / "sentences.txt"
    words = ["rain", "sun", "snow", "wind", "fog", "north", "south", "today"]
    rng = np.random.default_rng(0)
    path.write_text("\n".join(" ".join(rng.choice(words, 4)) for _ in range(60)), encoding="utf-8")
    out = tmp_path / "user"
    argv = ["--out", str(out), "--sentences", str(path), "--train", "24", "--dev", "6", "--test", "0",
            "--repeat-sentences", "0", "0", "--num-workers", "1", "--samples-per-shard", "8", "--no-progress"]
    assert main(argv) == 0
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["counts"] == {"train": 24, "dev": 6} and corpus["video_format"] == "mp4"
    index = load_index(out, "train")
    with tarfile.open(out / index.shards[0].name) as tar:
        video = decode_video("mp4", tar.extractfile("train_00000000.mp4").read())
    assert video.shape[1:] == (32, 32, 3) and len(video) == index.n_frames[0]
    assert main(["--out", str(tmp_path / "x"), "--sentences", str(path), "--vocab-size", "50"]) == 1


def test_cli_small_train_keeps_greeting_repeats_small():
    assert config_from_args(parse_args(["--out", "x", "--train", "32"])).repeat_sentences == (2, 2)
    assert config_from_args(parse_args(["--out", "x"])).repeat_sentences == (2, 12)
    explicit = parse_args(["--out", "x", "--train", "32", "--repeat-sentences", "1", "20"])
    assert config_from_args(explicit).repeat_sentences == (1, 20)
    knobs = config_from_args(parse_args(["--out", "x", "--preset", "csl-like", "--synonym-rate", "0", "--sentence-signs",
                                         "3", "5", "--variant-rate", "0.2"]))
    assert (knobs.synonym_rate, knobs.min_signs, knobs.max_signs, knobs.variant_rate) == (0.0, 3, 5, 0.2)
    assert knobs.paraphrases == PRESETS["csl-like"].paraphrases
    assert config_from_args(parse_args(["--out", "x", "--paraphrase-rate", "0.1"])).paraphrase_rate == 0.1
