"""Translation metrics against hand-computed values and sacreBLEU itself."""
import pytest
from sacrebleu.metrics import BLEU, CHRF

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


@pytest.mark.parametrize("tokenize", ["13a", "zh"])
def test_chrf_is_sacrebleus_corpus_chrf(tokenize):
    """chrF (character 6-grams, no word n-grams, beta 2) on the whole corpus, as sacreBLEU computes it; not chrF++,
    not an average of sentence scores. Broken variants tried: CHRF(word_order=2) (chrF++) and the mean of
    `sentence_score`s: both fail here."""
    hyps = ["morgen regen im norden und sonne", "heute wind", "im süden scheint die sonne", ""]
    refs = ["morgen regen im norden", "heute viel wind an der küste", "im süden scheint die sonne", "guten abend"]
    if tokenize == "zh":
        hyps, refs = ["今天下雨", "明天晴", ""], ["今天下雪", "明天晴天", "晚上好"]
    scores = score_translations(hyps, refs, bleu_tokenize=tokenize)
    sacrebleu_chrf = CHRF()
    expected = sacrebleu_chrf.corpus_score(hyps, [refs])
    assert scores.chrf == pytest.approx(expected.score, abs=1e-9)
    assert 0 < scores.chrf < 100
    assert scores.chrf_signature == str(sacrebleu_chrf.get_signature()) and "nc:6|nw:0" in scores.chrf_signature
    # the variants a wrong implementation would be: distinguishable on these sentences
    assert scores.chrf != pytest.approx(CHRF(word_order=2).corpus_score(hyps, [refs]).score, abs=1e-3)
    sentence_mean = sum(CHRF().sentence_score(h, [r]).score for h, r in zip(hyps, refs)) / len(refs)
    assert scores.chrf != pytest.approx(sentence_mean, abs=1e-3)


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
    assert scores.chrf == pytest.approx(CHRF().corpus_score(["今天下雨"], [["今天下雪"]]).score)


def test_mismatched_lengths_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        score_translations(["a", "b"], ["a"])
