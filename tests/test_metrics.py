"""Translation metrics against hand-computed values and sacreBLEU itself."""
import math

import pytest
from sacrebleu.metrics import BLEU

from recipe.metrics import rouge_l_sentence, score_translations


def test_perfect_translation_scores_100():
    refs = ["morgen regen im norden", "im süden scheint die sonne"]
    scores = score_translations(refs, refs)
    assert scores.bleu4 == pytest.approx(100.0)
    assert scores.rouge_l == pytest.approx(100.0)
    assert "tok:13a" in scores.bleu_signature


def test_bleu_orders_match_sacrebleu_cumulative():
    hyps = ["morgen regen im norden und sonne", "heute wind"]
    refs = ["morgen regen im norden", "heute viel wind an der küste"]
    scores = score_translations(hyps, refs)
    for order, value in enumerate([scores.bleu1, scores.bleu2, scores.bleu3, scores.bleu4], start=1):
        assert value == pytest.approx(BLEU(max_ngram_order=order).corpus_score(hyps, [refs]).score)
    assert scores.bleu1 >= scores.bleu2 >= scores.bleu3 >= scores.bleu4


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e") = 3 -> P = 3/4, R = 3/4 -> F = 0.75 for any beta
    assert rouge_l_sentence("a b c d".split(), "a c d e".split()) == pytest.approx(0.75)
    # P = 2/2, R = 2/4, beta 1.2: (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert rouge_l_sentence("a b".split(), "a x b y".split()) == pytest.approx(2.44 * 0.5 / 1.94)
    assert rouge_l_sentence([], ["a"]) == 0.0


def test_chinese_uses_character_tokens():
    scores = score_translations(["今天下雨"], ["今天下雪"], bleu_tokenize="zh")
    assert "tok:zh" in scores.bleu_signature
    assert scores.rouge_l == pytest.approx(75.0)
    assert not math.isnan(scores.chrf)


def test_mismatched_lengths_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        score_translations(["a", "b"], ["a"])
