"""The synthetic sign corpus: deterministic rendering, corpus structure, learnability, user text, CLI."""
from __future__ import annotations

import collections
import json
import tarfile
from dataclasses import replace

import numpy as np
import pytest

from sharded_data.format import decode_video, load_index, normalize_text
from sharded_data.grammar import GREETINGS, Grammar, greeting_words
from sharded_data.signs import make_signer, render_sentence, sentence_length, sign_for_word, stable_seed
from sharded_data.synth import (
    PRESETS,
    SYNTH_PRESETS_DOC,
    SynthConfig,
    config_from_args,
    main,
    parse_args,
    plan_corpus,
    sign_words,
)

# A corpus small enough to plan and render in a blink, with the tiny preset's look.
SMALL = replace(PRESETS["tiny"], train=120, dev=24, test=24, repeat_sentences=(2, 6))


def texts_and_signers(plan):
    return {split: [(src.text, src.signer, src.render_seed) for src in sources] for split, sources in plan.splits.items()}


def by_sentence(sources):
    groups = collections.defaultdict(list)
    for src in sources:
        groups[normalize_text(src.text)].append(src.signer)
    return groups


# ----------------------------------------------------------------------------------------- rendering


def test_render_is_deterministic_and_seed_dependent():
    style = make_signer(3, seed=0)
    words = ["tomorrow", "rain", "in", "the", "north"]
    first = render_sentence(words, style, (32, 32), 5, 1, seed=11)
    again = render_sentence(words, style, (32, 32), 5, 1, seed=11)
    other_seed = render_sentence(words, style, (32, 32), 5, 1, seed=12)
    assert first.dtype == np.uint8 and first.shape[1:] == (32, 32, 3)
    # rest + 5 words (frames per word x signer speed, +-1 each) + 6 transitions + rest
    expected = sentence_length(5, 5, 1, style.speed)
    assert expected - 5 <= len(first) <= expected + 5 and expected == 2 + 5 * round(5 * style.speed) + 6
    np.testing.assert_array_equal(first, again)
    assert len(first) != len(other_seed) or np.abs(first.astype(int) - other_seed).mean() > 1.0


def test_non_square_frames_and_signers_look_different():
    video = render_sentence(["sun"], make_signer(0, 0), (48, 64), 5, 1, seed=0)
    assert video.shape[1:] == (48, 64, 3)
    a = render_sentence(["sun"], make_signer(0, 0), (32, 32), 5, 0, seed=0).astype(float)
    b = render_sentence(["sun"], make_signer(1, 0), (32, 32), 5, 0, seed=0).astype(float)
    n = min(len(a), len(b))
    assert np.abs(a[:n] - b[:n]).mean() > 10  # other colours, background, body position


def test_signs_are_pure_functions_of_the_word_and_distinct():
    assert sign_for_word("Regen") == sign_for_word("regen")
    vocabulary = sorted(Grammar().vocabulary() | greeting_words(len(GREETINGS)))
    assert len(vocabulary) > 250
    signs = [sign_for_word(word) for word in vocabulary]
    assert len(set(signs)) == len(signs), "two grammar words share a sign"


def test_nearest_neighbour_recognizes_words_across_signers():
    """Learnability: one rendering per word by 3 signers is enough for a nearest-neighbour classifier to name
    the word signed by 3 other signers, using only a signer-independent feature (motion energy)."""
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
        (s, w): feature(render_sentence([word], signers[s], (32, 32), 5, 1, seed=stable_seed(s, word)))
        for s in range(6) for w, word in enumerate(vocabulary)
    }
    reference = np.stack([features[s, w] for s in range(3) for w in range(len(vocabulary))])
    reference_labels = np.array([w for s in range(3) for w in range(len(vocabulary))])
    queries = np.stack([features[s, w] for s in range(3, 6) for w in range(len(vocabulary))])
    query_labels = np.array([w for s in range(3, 6) for w in range(len(vocabulary))])
    predicted = reference_labels[np.argmax(queries @ reference.T, axis=1)]
    accuracy = float((predicted == query_labels).mean())
    assert accuracy > 0.8, f"nearest-neighbour word accuracy {accuracy:.2f} (chance {1 / len(vocabulary):.3f})"


# ------------------------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("vocab_size", [30, 60, 150])
def test_restricted_grammar_has_the_asked_vocabulary(vocab_size):
    grammar = Grammar().with_lengths(3, 7).restricted(vocab_size, reserved=greeting_words(2))
    size = len(grammar.vocabulary() | greeting_words(2))
    assert vocab_size - 3 <= size <= vocab_size
    rng = np.random.default_rng(0)
    for _ in range(200):
        sentence = grammar.sample(rng)
        assert 3 <= len(sentence.split()) <= 7
        assert set(sentence.split()) <= grammar.vocabulary()


def test_too_small_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size 3 is too small"):
        Grammar().restricted(3)


# ----------------------------------------------------------------------------------- corpus structure


def test_plan_is_deterministic_and_seed_dependent():
    first, again = plan_corpus(SMALL), plan_corpus(SMALL)
    assert texts_and_signers(first) == texts_and_signers(again)
    np.testing.assert_array_equal(first.splits["dev"][5].load_frames(), again.splits["dev"][5].load_frames())
    other = plan_corpus(replace(SMALL, seed=1))
    assert [s.text for s in other.splits["train"]] != [s.text for s in first.splits["train"]]
    assert not np.array_equal(first.splits["train"][0].load_frames(), other.splits["train"][0].load_frames())


def test_counts_names_and_signers():
    plan = plan_corpus(SMALL)
    assert {split: len(sources) for split, sources in plan.splits.items()} == {"train": 120, "dev": 24, "test": 24}
    assert plan.splits["train"][7].name == "synth/train/000007"
    assert {src.signer for sources in plan.splits.values() for src in sources} <= {f"signer{i:02d}" for i in range(8)}
    assert len(plan.info["vocabulary"]) == plan.info["vocabulary_size"]
    assert plan.info["settings"]["signers_per_sentence"] == (2, 4)


def test_same_sentence_structure_csl_daily_regime():
    plan = plan_corpus(SMALL)
    greetings = {normalize_text(g) for g in GREETINGS[:2]}
    for split, sources in plan.splits.items():
        groups = by_sentence(sources)
        for text, signers in groups.items():
            if text in greetings:
                assert split == "train" and len(signers) == 6
                continue
            assert 2 <= len(signers) <= 4, (split, text, signers)
            assert len(set(signers)) == len(signers), "one sentence is signed by different signers"
    assert all(len(signers) >= 2 for signers in by_sentence(plan.splits["train"]).values())


def test_repeated_sentences_phoenix_regime():
    config = replace(SMALL, signers_per_sentence=(1, 1), repeat_sentences=(3, 20), num_signers=9)
    plan = plan_corpus(config)
    counts = collections.Counter(normalize_text(src.text) for src in plan.splits["train"])
    repeated = [text for text, n in counts.items() if n > 1]
    assert sorted(repeated) == sorted(normalize_text(g) for g in GREETINGS[:3])
    assert all(counts[text] == 20 for text in repeated)
    assert sum(counts.values()) == 120 and len(counts) == 120 - 3 * 20 + 3
    # 20 recordings by 9 signers: signers repeat, but the recordings differ (own render seed)
    seeds = [src.render_seed for src in plan.splits["train"] if normalize_text(src.text) in repeated]
    assert len(set(seeds)) == len(seeds)


def test_held_out_splits_are_new_sentences_of_training_words():
    plan = plan_corpus(SMALL)
    train_texts = {normalize_text(src.text) for src in plan.splits["train"]}
    train_words = {word for src in plan.splits["train"] for word in src.words}
    for split in ("dev", "test"):
        for src in plan.splits[split]:
            assert set(src.words) <= train_words, f"{split} word unseen in train: {src.text}"
            assert normalize_text(src.text) not in train_texts
    dev_texts = {normalize_text(src.text) for src in plan.splits["dev"]}
    assert not dev_texts & {normalize_text(src.text) for src in plan.splits["test"]}


def test_invalid_config_is_a_clear_error():
    with pytest.raises(ValueError, match="signers_per_sentence"):
        plan_corpus(replace(SMALL, signers_per_sentence=(2, 12)))
    with pytest.raises(ValueError, match="repeat_sentences"):
        plan_corpus(replace(SMALL, repeat_sentences=(10, 20)))


def test_presets_are_valid_and_documented():
    for name, config in PRESETS.items():
        config.validate()
        assert config.preset == name and f"| {name}" in SYNTH_PRESETS_DOC
    tiny = PRESETS["tiny"]
    assert tiny.frame_size == (32, 32) and 40 <= tiny.vocab_size <= 80 and (tiny.train, tiny.dev, tiny.test) == (1000, 100, 100)


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
    train_words = {word for src in plan.splits["train"] for word in src.words}
    for sources in plan.splits.values():
        for src in sources:
            assert normalize_text(src.text) in file_texts
            assert src.words == sign_words(src.text) and "." not in src.words
    for split in ("dev", "test"):
        for src in plan.splits.get(split, []):
            assert set(src.words) <= train_words
    assert {split: len(sources) for split, sources in plan.splits.items()} == {"train": 10, "dev": 2, "test": 2}
    # "Der Wind weht aus Westen." and "der wind weht aus westen" are signed alike: one sentence, not two
    all_texts = {src.text for sources in plan.splits.values() for src in sources}
    assert len({sign_words(text) for text in all_texts}) == len(all_texts)
    assert "der wind weht aus westen" not in all_texts
    assert "süden" in train_words  # words from outside the grammar, non-ASCII included
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
            "--samples-per-shard", "16", "--no-progress"]
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
    assert generator["settings"]["frame_size"] == [24, 32]

    config = replace(PRESETS["tiny"], seed=5, train=30, dev=8, test=8, frame_size=(24, 32), repeat_sentences=(1, 4))
    plan = plan_corpus(config)
    for split, sources in plan.splits.items():
        index = load_index(out, split)
        assert index.num_samples == len(sources)
        assert index.text == [src.text for src in sources]
        assert index.signer == [src.signer for src in sources]
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
