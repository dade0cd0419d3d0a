import pytest
import torch

from recipe.retrieval import recall_at_k


def test_recall_by_hand():
    # 3 samples, distinct sentences. v2t: rows 0 and 1 rank their pair first, row 2 ranks it third.
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.7, 0.5, 0.1]])
    scores = recall_at_k(sim, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert scores["v2t_r1"] == pytest.approx(100 * 2 / 3)
    assert scores["v2t_r2"] == pytest.approx(100 * 2 / 3)
    assert scores["v2t_r3"] == 100.0
    # t2v (columns): col 0 best row 0 (hit), col 1 best row 1 (hit), col 2 best row 1 (miss), then row 2 (hit at 2)
    assert scores["t2v_r1"] == pytest.approx(100 * 2 / 3) and scores["t2v_r2"] == 100.0


def test_same_sentence_counts_as_hit():
    sim = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # each video prefers the other sample's text...
    assert recall_at_k(sim, torch.tensor([5, 5]), ks=(1,))["v2t_r1"] == 100.0  # ...which is the same sentence
    assert recall_at_k(sim, torch.tensor([5, 6]), ks=(1,))["v2t_r1"] == 0.0
