"""Intervals for the quality study: paired over seeds, bootstrapped over test sentences.

A comparison "arm A - arm B" on one corpus uses the runs of both arms with the same seeds (a seed fixes the
model's initialisation, the batches and the augmentation; the corpus is the same for every seed). Its
estimate is the mean over seeds of the per-seed difference d_s = metric(A, s) - metric(B, s), each metric
computed once on the whole test set (corpus BLEU, not an average of sentence BLEUs). Two independent sources
of uncertainty enter it:

* training noise: with the test set fixed, d_s varies from seed to seed; its standard error is
  se_seed = sd(d_s) / sqrt(n) over the n seeds;
* test-set sampling: the test sentences are themselves a sample. A paired bootstrap over sentences (one
  resample of sentence positions, used for every seed and for both arms, as sacreBLEU's `paired_bs` test
  does for two systems) gives the standard error se_sentence of mean_s d_s.

The 95% interval is mean +- t(0.975, n - 1) * sqrt(se_seed^2 + se_sentence^2): Student's t for the few seeds
(with n = 5, t = 2.78), the sentence term added in variance. With a single seed only the sentence term is
left, and the interval says so (`seeds` = 1). Seeds whose hypotheses are lost are pooled with later ones by
`pooled_difference`, whose sentence term is an upper bound.

Sentence-level sufficient statistics come from sacreBLEU itself (`_extract_corpus_statistics` and
`_compute_score_from_stats`, the functions its own significance tests use), so a resampled corpus score is
exactly what `sacrebleu` would report on the resampled corpus; ROUGE-L is the mean of `recipe.metrics`'
sentence scores, as in the study's reports.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from recipe.metrics import ROUGE_BETA, rouge_l_sentence

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "chrf")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093}


def t_quantile(df: int) -> float:
    """Two-sided 95% Student t quantile (1.96 beyond the table)."""
    return T_975.get(df, 1.96 if df > 19 else float("nan"))


@lru_cache(maxsize=None)
def _metric(name: str, tokenize: str):
    if name.startswith("bleu"):
        return BLEU(max_ngram_order=int(name[-1]), tokenize=tokenize)
    if name == "chrf":
        return CHRF()
    raise ValueError(f"no corpus statistics for {name!r}")


class SentenceStats:
    """Per-sentence statistics of one run's test translations, from which any resample's score follows."""

    def __init__(self, hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> None:
        if len(hypotheses) != len(references) or not references:
            raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
        self.tokenize = tokenize
        self.size = len(references)
        self.stats: dict[str, np.ndarray] = {}
        bleu4 = np.asarray(_metric("bleu4", tokenize)._extract_corpus_statistics(list(hypotheses), [list(references)]))
        for order in (1, 2, 3, 4):
            # BLEU's statistics are [hyp_len, ref_len, correct_1..N, total_1..N]: BLEU-n keeps the first n orders.
            self.stats[f"bleu{order}"] = np.concatenate([bleu4[:, :2], bleu4[:, 2:2 + order], bleu4[:, 6:6 + order]], 1)
        self.stats["chrf"] = np.asarray(_metric("chrf", tokenize)._extract_corpus_statistics(list(hypotheses), [list(references)]))
        split = list if tokenize == "zh" else str.split
        self.rouge = np.array([rouge_l_sentence(split(h), split(r), ROUGE_BETA) for h, r in zip(hypotheses, references)])

    def score(self, metric: str, positions: np.ndarray | None = None) -> float:
        """The metric on the sentences at `positions` (all when None; repeats count as often as they occur)."""
        if metric == "rouge_l":
            values = self.rouge if positions is None else self.rouge[positions]
            return 100.0 * float(values.mean())
        rows = self.stats[metric] if positions is None else self.stats[metric][positions]
        return float(_metric(metric, self.tokenize)._compute_score_from_stats(rows.sum(0).tolist()).score)


@dataclass
class PairedDifference:
    metric: str
    seeds: list[int]
    per_seed: list[float]
    """d_s = metric(A, s) - metric(B, s) on the whole test set, in the order of `seeds`."""
    mean: float
    se_seed: float
    se_sentence: float
    low: float
    high: float
    sentences: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {**asdict(self), "half_width": self.half_width}


def paired_difference(arm: Mapping[int, SentenceStats], base: Mapping[int, SentenceStats], metric: str,
                      resamples: int = 1000, seed: int = 12345) -> PairedDifference:
    """Mean over the common seeds of metric(arm) - metric(base), with the interval of the module docstring."""
    seeds = sorted(set(arm) & set(base))
    if not seeds:
        raise ValueError("the two arms have no seed in common")
    size = arm[seeds[0]].size
    if any(arm[s].size != size or base[s].size != size for s in seeds):
        raise ValueError("every run of a comparison must translate the same test sentences")
    per_seed = [arm[s].score(metric) - base[s].score(metric) for s in seeds]
    mean = statistics.fmean(per_seed)
    n = len(seeds)
    se_seed = statistics.stdev(per_seed) / math.sqrt(n) if n > 1 else 0.0
    rng = np.random.default_rng(seed)
    replicates = np.empty(resamples)
    for b in range(resamples):
        positions = rng.integers(0, size, size)  # one resample for every seed and both arms: paired
        replicates[b] = statistics.fmean(arm[s].score(metric, positions) - base[s].score(metric, positions)
                                         for s in seeds)
    se_sentence = float(replicates.std(ddof=1))
    half = (t_quantile(n - 1) if n > 1 else 1.96) * math.sqrt(se_seed**2 + se_sentence**2)
    return PairedDifference(metric, seeds, per_seed, mean, se_seed, se_sentence, mean - half, mean + half, size)


def pooled_difference(earlier: Mapping, later: PairedDifference | None) -> PairedDifference:
    """`earlier` (a PairedDifference's dict from seeds whose hypotheses are gone: only its per-seed differences
    and sentence term survive) pooled with `later` (seeds with hypotheses) into one difference over all seeds.

    The seed term is exact: sd over every per-seed difference. The sentence term of the pooled mean
    (n_e * m_e + n_l * m_l) / n is bounded from above: the two groups' bootstrap replicates would come from one
    resample, so they correlate by an unknown rho <= 1, and sd(n_e m_e + n_l m_l) <= n_e se_e + n_l se_l
    (rho = 1). The interval is therefore at least as wide as the one all hypotheses would give."""
    seeds, per_seed = list(earlier["seeds"]), list(earlier["per_seed"])
    if later is None:
        return PairedDifference(earlier["metric"], seeds, per_seed, earlier["mean"], earlier["se_seed"],
                                earlier["se_sentence"], earlier["low"], earlier["high"], earlier["sentences"])
    if set(seeds) & set(later.seeds) or earlier["sentences"] != later.sentences or earlier["metric"] != later.metric:
        raise ValueError("pooled groups must have distinct seeds, one test set and one metric")
    seeds, per_seed = seeds + later.seeds, per_seed + later.per_seed
    n = len(seeds)
    mean = statistics.fmean(per_seed)
    se_seed = statistics.stdev(per_seed) / math.sqrt(n)
    se_sentence = (len(earlier["seeds"]) * earlier["se_sentence"] + len(later.seeds) * later.se_sentence) / n
    half = t_quantile(n - 1) * math.sqrt(se_seed**2 + se_sentence**2)
    return PairedDifference(later.metric, seeds, per_seed, mean, se_seed, se_sentence, mean - half, mean + half,
                            later.sentences)


def read_hypotheses(path) -> dict[int, tuple[str, str]]:
    """A report's `*.hyp.tsv` (sample id, hypothesis, reference; header first) as {sample id: (hyp, ref)}."""
    rows = {}
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            sample_id, hypothesis, reference = line.rstrip("\n").split("\t")
            rows[int(sample_id)] = (hypothesis, reference)
    return rows


def run_stats(path, tokenize: str = "13a") -> SentenceStats:
    """SentenceStats of a report's `test.hyp.tsv`, sentences in sample-id order (so runs align)."""
    rows = read_hypotheses(path)
    ordered = [rows[key] for key in sorted(rows)]
    return SentenceStats([h for h, _ in ordered], [r for _, r in ordered], tokenize)
