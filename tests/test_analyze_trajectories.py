"""Trajectory analysis: categories on constructed trajectories (also per ground-truth pair kind), pair sampling,
and the CLI's outputs."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from recipe.analyze_trajectories import (
    CATEGORIES,
    analyze,
    categorize,
    main,
    markdown_table,
    negative_pairs,
    same_sentence_pairs,
)
from recipe.trajectory_store import load_trajectory, save_reference_checkpoint
from sharded_data.pair_stats import KINDS, PairSample
from sharded_data.synth import PRESETS, write_synthetic_corpus

# Every video points along x, so s(i, j) = x-component of text j: text j decides the category of all pairs (i, j).
# (first, middle, last) x-component per text; thresholds high 0.5, low 0.3.
DESIGN = {
    0: (0.9, 0.5, 0.1),  # high -> low
    1: (0.9, 0.2, 0.8),  # stays high (a dip in the middle does not matter)
    2: (0.1, 0.5, 0.9),  # low -> high
    3: (0.1, 0.1, 0.0),  # stays low
    4: (0.4, 0.4, 0.4),  # other: in the band between the thresholds
}


def _write_run(tmp_path, sentence_ids=(0, 1, 2, 3, 4)):
    n = len(DESIGN)
    for t, epoch in enumerate((0, 5, 10)):
        x = torch.tensor([DESIGN[j][t] for j in range(n)])
        text = torch.stack([x, torch.sqrt(1 - x**2)], dim=1)
        video = torch.tensor([[1.0, 0.0]]).expand(n, 2)
        save_reference_checkpoint(tmp_path, epoch, torch.arange(n), torch.tensor(sentence_ids), video, text)
    return tmp_path


def test_categorize_boundaries():
    first = np.array([0.5, 0.5, 0.3, 0.3, 0.31, 0.9])
    last = np.array([0.3, 0.5, 0.5, 0.3, 0.9, 0.49])
    assert [CATEGORIES[c] for c in categorize(first, last, 0.5, 0.3)] == [
        "high_to_low", "stays_high", "low_to_high", "stays_low", "other", "other"
    ]
    with pytest.raises(ValueError, match="low threshold"):
        categorize(first, last, 0.3, 0.5)


def test_categories_on_constructed_trajectories(tmp_path):
    summary, arrays = analyze(load_trajectory(_write_run(tmp_path)), high=0.5, low=0.3)
    assert summary["num_negative_pairs"] == 20 and not summary["pairs_sampled"]
    assert summary["counts"] == {c: 4 for c in CATEGORIES}
    assert summary["shares"]["high_to_low"] == pytest.approx(0.2)
    assert summary["num_same_sentence_pairs"] == 0
    np.testing.assert_allclose(np.sort(arrays["delta"]), np.sort(np.repeat([-0.8, -0.1, 0.8, -0.1, 0.0], 4)), atol=2e-3)


def test_same_sentence_pairs_are_excluded_and_reported_apart(tmp_path):
    summary, arrays = analyze(load_trajectory(_write_run(tmp_path, sentence_ids=(0, 1, 2, 3, 3))), 0.5, 0.3)
    # (3, 4) and (4, 3) say the same sentence: columns 3 and 4 lose one negative each.
    assert summary["counts"] == {"high_to_low": 4, "stays_high": 4, "low_to_high": 4, "stays_low": 3, "other": 3}
    assert summary["num_negative_pairs"] == 18 and summary["num_same_sentence_pairs"] == 2
    np.testing.assert_allclose(np.sort(arrays["same_delta"]), [-0.1, 0.0], atol=2e-3)


def test_relative_thresholds_are_quantiles(tmp_path):
    summary, _ = analyze(load_trajectory(_write_run(tmp_path)), high=0.5, low=0.5, relative=True)
    sims = np.repeat(np.array(list(DESIGN.values())).T, 4, axis=1)
    assert summary["thresholds"]["high"] == pytest.approx(np.quantile(sims, 0.5), abs=2e-3)
    assert sum(summary["counts"].values()) == 20 and summary["counts"]["other"] == 0  # one threshold: no band


def test_pair_sampling_for_large_runs():
    class Fake:
        sample_ids = torch.arange(1000)
        sentence_ids = torch.arange(1000) // 2  # pairs of twins
    rng = np.random.default_rng(0)
    rows, cols = negative_pairs(Fake, max_pairs=5000, rng=rng)
    assert len(rows) == 5000 and (Fake.sentence_ids.numpy()[rows] != Fake.sentence_ids.numpy()[cols]).all()
    rows, cols = same_sentence_pairs(Fake, max_pairs=300, rng=rng)
    assert len(rows) == 300 and (rows // 2 == cols // 2).all() and (rows != cols).all()


def test_cli_writes_table_json_and_plots(tmp_path, capsys):
    run = _write_run(tmp_path / "run", sentence_ids=(0, 1, 2, 3, 3))
    out = tmp_path / "analysis"
    main([str(run), "--out", str(out), "--high", "0.5", "--low", "0.3", "--num-epochs", "12"])
    summary = json.loads((out / "trajectory_categories.json").read_text())
    assert summary["reference_epochs"] == [0, 5, 10] and summary["counts"]["stays_low"] == 3
    table = (out / "trajectory_categories.md").read_text()
    assert "| high -> low | 4 | 22.2% | ~36% |" in table and "~32%" in table and "~18%" in table
    assert table in capsys.readouterr().out
    for name in ("trajectory_examples.png", "delta_histogram.png", "curriculum_schedules.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


# Ground truth for the 5 samples of `_write_run`: 0/1 hidden twins, 2 one sign from both, 3 signed by 0's signer.
TRUTH = [PairSample("a", "s1", ("A", "B")), PairSample("b", "s2", ("A", "B")), PairSample("c", "s3", ("A", "C")),
         PairSample("d", "s1", ("X", "Y", "Z")), PairSample("e", "s4", ("P", "Q", "R"))]


def test_categories_per_ground_truth_kind(tmp_path):
    """Each negative (video i, text j) takes the category of text j (DESIGN); the kinds table splits them by
    pair kind. Broken variant tried: a kind's row taking the pairs of that kind and of every later kind
    (`kind_of >= position`) -> the counts were wrong."""
    summary, _ = analyze(load_trajectory(_write_run(tmp_path)), 0.5, 0.3, samples=TRUTH)
    by_kind = summary["by_kind"]
    assert by_kind["hidden_twin"]["counts"] == {"high_to_low": 1, "stays_high": 1, "low_to_high": 0, "stays_low": 0,
                                                "other": 0}
    assert by_kind["one_sign_apart"]["counts"] == {"high_to_low": 1, "stays_high": 1, "low_to_high": 2,
                                                   "stays_low": 0, "other": 0}
    assert by_kind["same_signer"]["counts"] == {"high_to_low": 1, "stays_high": 0, "low_to_high": 0, "stays_low": 1,
                                                "other": 0}
    assert by_kind["unrelated"]["counts"] == {"high_to_low": 1, "stays_high": 2, "low_to_high": 2, "stays_low": 3,
                                              "other": 4}
    assert by_kind["exact_twin"]["pairs"] == 0 and by_kind["hidden_twin"]["shares"]["stays_high"] == 0.5
    table = markdown_table(summary)
    assert "| hidden twin (same glosses, other text) | 2 | 50.0% | 50.0% | 0.0% | 0.0% | 0.0% |" in table
    with pytest.raises(ValueError, match="not this run's data"):
        analyze(load_trajectory(tmp_path), 0.5, 0.3, samples=TRUTH[:3])


def test_exact_twins_row_holds_the_same_sentence_pairs(tmp_path):
    truth = TRUTH[:3] + [PairSample("d", "s1", ("X", "Y")), PairSample("d", "s4", ("X", "Y", "IX"))]
    summary, _ = analyze(load_trajectory(_write_run(tmp_path, sentence_ids=(0, 1, 2, 3, 3))), 0.5, 0.3, samples=truth)
    # (3, 4): text 4 is "other"; (4, 3): text 3 is "stays low"
    assert summary["by_kind"]["exact_twin"]["counts"] == {"high_to_low": 0, "stays_high": 0, "low_to_high": 0,
                                                          "stays_low": 1, "other": 1}
    no_gloss = [PairSample(s.text, s.signer) for s in truth]
    table = markdown_table(analyze(load_trajectory(tmp_path), 0.5, 0.3, samples=no_gloss)[0])
    assert "| one sign apart | n/a |" in table


def test_cli_reads_the_ground_truth_of_the_runs_data(tmp_path, capsys):
    data = tmp_path / "shards"
    write_synthetic_corpus(data, replace(PRESETS["tiny"], train=5, dev=0, test=0, signers_per_sentence=(1, 1),
                                         repeat_sentences=(0, 0), frame_size=(16, 16)), video_format="npy", num_workers=1)
    run = _write_run(tmp_path / "run")
    out = tmp_path / "analysis"
    main([str(run), "--out", str(out), "--data", str(data)])
    summary = json.loads((out / "trajectory_categories.json").read_text())
    assert sum(row["pairs"] for kind, row in summary["by_kind"].items() if kind in KINDS) == 20
    assert "Categories per ground-truth pair kind" in capsys.readouterr().out
    main([str(run), "--out", str(tmp_path / "bare")])  # no config.json, no --data: said, not silent
    assert "no categories per pair kind" in capsys.readouterr().out
    assert "by_kind" not in json.loads((tmp_path / "bare" / "trajectory_categories.json").read_text())
