"""Translation metrics, computed once on the whole set of gathered strings (never per rank and averaged).

BLEU-1..4 are sacreBLEU's cumulative BLEU with max n-gram order 1..4 (what the SLT literature reports as
BLEU-n), with sacreBLEU's signature so results are comparable: tokenizer 13a for German/English, zh for
Chinese. ROUGE-L is the sentence-level LCS F-score with beta = 1.2 averaged over sentences, as in the
Sign Language Transformers / GFSLT-VLP evaluation code that the field's tables come from. chrF is
sacreBLEU's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF

ROUGE_BETA = 1.2


@dataclass
class TranslationScores:
    bleu1: float
    bleu2: float
    bleu3: float
    bleu4: float
    rouge_l: float
    chrf: float
    num_sentences: int
    bleu_signature: str
    chrf_signature: str

    def as_dict(self) -> dict:
        return asdict(self)


def score_translations(hypotheses: list[str], references: list[str], bleu_tokenize: str = "13a") -> TranslationScores:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("no sentences to score")
    bleus = {}
    signature = ""
    for order in range(1, 5):
        metric = BLEU(max_ngram_order=order, tokenize=bleu_tokenize)
        bleus[order] = metric.corpus_score(hypotheses, [references]).score
        signature = str(metric.get_signature())
    chrf_metric = CHRF()
    chrf = chrf_metric.corpus_score(hypotheses, [references]).score
    # ROUGE-L is computed on the same tokens BLEU sees for Chinese (characters); on spaces otherwise.
    split = list if bleu_tokenize == "zh" else str.split
    rouge = 100.0 * sum(rouge_l_sentence(split(h), split(r)) for h, r in zip(hypotheses, references)) / len(references)
    return TranslationScores(
        bleu1=bleus[1],
        bleu2=bleus[2],
        bleu3=bleus[3],
        bleu4=bleus[4],
        rouge_l=rouge,
        chrf=chrf,
        num_sentences=len(references),
        bleu_signature=signature,
        chrf_signature=str(chrf_metric.get_signature()),
    )


def rouge_l_sentence(hypothesis: list[str], reference: list[str], beta: float = ROUGE_BETA) -> float:
    """LCS-based F-score of one sentence pair (0 when either side is empty)."""
    if not hypothesis or not reference:
        return 0.0
    lcs = _lcs_length(hypothesis, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            current.append(previous[j] + 1 if token_a == token_b else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
