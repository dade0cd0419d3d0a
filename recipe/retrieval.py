"""Video-text retrieval metrics on a whole evaluation set (dev R@1/5/10 during pretraining).

A hit at rank k means one of the k best-scored candidates is the query's own pair or another sample of
the same sentence: a text identical to the reference is as correct as the reference itself (PHOENIX-2014T
repeats some sentences dozens of times), so counting it as a miss would only measure chance.
"""
from __future__ import annotations

import torch

RECALL_AT = (1, 5, 10)


def recall_at_k(similarity: torch.Tensor, sentence_ids: torch.Tensor, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """Recall@k in percent, both directions, for a square [videos x texts] similarity of paired samples.

    Row i and column i are the same sample; `sentence_ids[i]` says which sentence it is.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"expected a square similarity of paired samples, got {tuple(similarity.shape)}")
    if similarity.shape[0] != sentence_ids.numel():
        raise ValueError(f"{similarity.shape[0]} samples but {sentence_ids.numel()} sentence ids")
    same_sentence = sentence_ids.view(-1, 1) == sentence_ids.view(1, -1)
    results = {}
    for direction, scores in (("v2t", similarity), ("t2v", similarity.t())):
        order = scores.argsort(dim=1, descending=True)
        hits = torch.gather(same_sentence, 1, order)  # hits[i, r]: is the r-th best candidate correct?
        first_hit = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.full_like(order[:, 0], hits.shape[1]))
        for k in ks:
            results[f"{direction}_r{k}"] = 100.0 * (first_hit < k).float().mean().item()
    return results
