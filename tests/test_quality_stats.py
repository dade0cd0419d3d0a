"""The quality study's intervals (benchmarks/quality_stats.py).

Broken variants these tests caught when tried: BLEU-n statistics cut to the wrong orders (the full-set score
then differs from sacreBLEU's); a fresh sentence resample per arm instead of one shared resample (the
identical-but-one-sentence case then gets a wide interval around a one-sentence effect); the seed term left
out of the interval (the noisy-seeds case then excludes zero although the seeds disagree in sign).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from recipe.metrics import score_translations

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quality_stats", REPO / "benchmarks" / "quality_stats.py")
stats = importlib.util.module_from_spec(spec)
sys.modules["quality_stats"] = stats
spec.loader.exec_module(stats)

REFERENCES = [
    "tomorrow rain in the north", "temperatures between five and ten degrees", "good evening dear viewers",
    "in the south sun and clouds", "the wind blows strong from the west", "tonight frost in the valleys",
    "friday it stays dry and mild", "in berlin twelve degrees", "showers move to the east",
    "today fog in the lowlands", "heavy snow in the alps", "later clear and cold",
]


def _noisy(references: list[str], rng: np.random.Generator, drop: float) -> list[str]:
    """Hypotheses that lose each word with probability `drop` (some sentences become empty)."""
    return [" ".join(w for w in r.split() if rng.random() > drop) for r in references]


def test_full_set_scores_equal_the_recipes_sacrebleu_scores():
    rng = np.random.default_rng(0)
    hypotheses = _noisy(REFERENCES, rng, 0.3)
    expected = score_translations(hypotheses, REFERENCES).as_dict()
    found = stats.SentenceStats(hypotheses, REFERENCES)
    for metric in stats.METRICS:
        assert found.score(metric) == pytest.approx(expected[metric], abs=1e-9), metric


def test_a_resample_scores_like_sacrebleu_on_the_resampled_corpus():
    rng = np.random.default_rng(1)
    hypotheses = _noisy(REFERENCES, rng, 0.4)
    positions = rng.integers(0, len(REFERENCES), len(REFERENCES))
    expected = score_translations([hypotheses[p] for p in positions], [REFERENCES[p] for p in positions]).as_dict()
    found = stats.SentenceStats(hypotheses, REFERENCES)
    for metric in stats.METRICS:
        assert found.score(metric, positions) == pytest.approx(expected[metric], abs=1e-9), metric


def test_identical_arms_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    runs = {seed: stats.SentenceStats(_noisy(REFERENCES, rng, 0.3), REFERENCES) for seed in range(3)}
    result = stats.paired_difference(runs, runs, "bleu4", resamples=200)
    assert result.mean == 0.0 and result.low == 0.0 and result.high == 0.0


def test_the_sentence_resample_is_shared_by_both_arms():
    """Arm = base except one sentence, empty in base and perfect in arm, in every seed: each seed's difference
    is exactly 100/12 ROUGE-L, so training noise is nil and only test-set sampling is uncertain: the number of
    times that sentence is drawn, Binomial(12, 1/12), i.e. se = 100/12 * sqrt(11/12). An unpaired resample (one
    per arm) would add both arms' whole sampling noise to it."""
    rng = np.random.default_rng(3)
    base, arm = {}, {}
    for seed in range(4):
        hyps = _noisy(REFERENCES, rng, 0.35)
        hyps[0] = ""
        base[seed] = stats.SentenceStats(hyps, REFERENCES)
        hyps[0] = REFERENCES[0]
        arm[seed] = stats.SentenceStats(hyps, REFERENCES)
    result = stats.paired_difference(arm, base, "rouge_l", resamples=2000)
    effect = 100 / len(REFERENCES)
    assert result.per_seed == pytest.approx([effect] * 4) and result.se_seed == pytest.approx(0, abs=1e-9)
    assert result.se_sentence == pytest.approx(effect * np.sqrt(11 / 12), rel=0.1)


def test_seeds_that_disagree_in_sign_give_an_interval_around_zero():
    """Half the seeds improve a lot, half get a lot worse, on 480 sentences (little sentence noise): the
    interval must include 0, which it does not without the seed term."""
    rng = np.random.default_rng(4)
    references = REFERENCES * 40
    arm, base = {}, {}
    for seed in range(6):
        hyps = _noisy(references, rng, 0.3)
        other = _noisy(references, rng, 0.1 if seed % 2 else 0.5)
        arm[seed], base[seed] = stats.SentenceStats(other, references), stats.SentenceStats(hyps, references)
    result = stats.paired_difference(arm, base, "bleu1", resamples=200)
    assert any(d > 0 for d in result.per_seed) and any(d < 0 for d in result.per_seed)
    assert result.se_sentence < result.se_seed / 4
    assert result.low < 0 < result.high


def test_runs_of_different_test_sets_are_refused():
    one = stats.SentenceStats(["a b"], ["a b"])
    two = stats.SentenceStats(["a b", "c"], ["a b", "c"])
    with pytest.raises(ValueError, match="same test sentences"):
        stats.paired_difference({0: one}, {0: two}, "bleu4")
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_difference({0: one}, {1: one}, "bleu4")


def test_reports_are_read_in_sample_id_order(tmp_path):
    path = tmp_path / "test.hyp.tsv"
    path.write_text("sample_id\thypothesis\treference\n2\tb\tb x\n0\ta\ta\n")
    found = stats.run_stats(path)
    assert found.size == 2 and found.rouge[0] == 1.0 and found.rouge[1] < 1.0
