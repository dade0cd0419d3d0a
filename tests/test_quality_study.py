"""The quality study's plan and report (benchmarks/bench_quality.py, benchmarks/quality_report.py).

The study itself takes hours of CPU; here its plan is checked against the recipe's own parsers (every run
it would start is a valid command line with the settings the arm claims) and its aggregation is run on a
fabricated tree of finished runs, so neither can rot.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from recipe.config import FinetuneConfig, PretrainConfig, parse_config

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))  # bench_quality imports quality_report as a sibling
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench_quality")
report = _load("quality_report")


def _args(tmp_path: Path, **changes) -> argparse.Namespace:
    parser_defaults = dict(out=str(tmp_path / "study"), seeds=[0, 1, 2], corpora=["csl", "phoenix"],
                           arms=list(bench.ARMS), train=320, eval_samples=80, pretrain_epochs=6, record_every=2,
                           finetune_epochs=8, batch_size=16, num_beams=1, workers=2, report=False,
                           results=str(tmp_path / "results"))
    return argparse.Namespace(**{**parser_defaults, **changes})


def _parse(job):
    module, argv = job.command[2], job.command[3:]
    return parse_config(PretrainConfig if module == "recipe.pretrain" else FinetuneConfig, argv)


def test_every_planned_run_is_a_valid_command_with_the_arms_settings(tmp_path):
    jobs = bench.plan_jobs(_args(tmp_path))
    assert len(jobs) == 2 * 3 * (9 + 10)  # corpora x seeds x (9 pretrainings + 10 finetunings)
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        config = _parse(job)
        corpus, seed, arm, stage = job.name.split("/")
        assert config.seed == int(seed) and config.data.endswith(f"corpora/{corpus}")
        if stage == "pretrain":
            assert config.epochs == 6
            assert config.negatives == ("random" if arm.startswith("random") else "ps")
            assert config.translation_weight == (0.0 if arm.endswith("_contrastive") else 1.0)
            if not arm.startswith("random"):
                assert job.needs == [f"{corpus}/{seed}/random/pretrain"]
                assert config.reference_run == str(by_name[job.needs[0]].out)
        else:
            # the same optimizer steps for every arm: translation only gets the pretraining epochs too
            assert config.epochs == (14 if arm == "translation_only" else 8)
            assert bool(config.init) == (arm != "translation_only")
    settings = {j.name.split("/")[2]: _parse(j) for j in jobs if j.name.startswith("csl/0/") and "pretrain" in j.name}
    assert settings["ps_last"].ps_score == "last" and settings["ps_log"].ps_score == "delta"
    assert settings["ps_no_mask"].same_sentence == "negative" and settings["ps_log"].same_sentence == "mask"
    assert settings["ps_easy"].curriculum == "easy" and settings["ps_hard"].curriculum == "hard"
    assert settings["random"].record_trajectory_every == 2
    assert settings["ps_batches_only"].ps_keep_fraction == 1.0 and settings["ps_log"].ps_keep_fraction == 0.5


def test_main_arms_of_every_seed_come_before_the_ablations(tmp_path):
    arms = [j.arm for j in bench.plan_jobs(_args(tmp_path))]
    last_main = max(i for i, a in enumerate(arms) if a in bench.MAIN_ARMS)
    assert all(a in bench.MAIN_ARMS for a in arms[:last_main + 1])


def test_an_ablation_alone_brings_its_reference_run(tmp_path):
    names = [j.name for j in bench.plan_jobs(_args(tmp_path, arms=["ps_hard"], seeds=[1], corpora=["csl"]))]
    assert names == ["csl/1/random/pretrain", "csl/1/ps_hard/pretrain", "csl/1/ps_hard/finetune"]


def _leaves_mark(path: Path, exit_code: int = 0) -> list[str]:
    """A job command that appends a line to `path` each time it runs, then exits with `exit_code`."""
    return [sys.executable, "-c", f"import pathlib, sys; f = pathlib.Path({str(path)!r}); "
            f"f.write_text((f.read_text() if f.exists() else '') + 'ran\\n'); sys.exit({exit_code})"]


def test_failed_run_skips_what_needs_it_and_finished_runs_are_not_rerun(tmp_path):
    """Broken variant tried: run_jobs queueing every job, finished or not (`pending = list(jobs)`): the
    finished run's command runs again and the test fails on its mark."""
    marks = tmp_path / "marks"
    marks.mkdir()
    dirs = {name: tmp_path / name for name in ("ok", "bad", "child", "done", "after_done")}
    for d in dirs.values():
        d.mkdir()
    finished_record = json.dumps({"seconds": 12.0, "command": ["an earlier run"]})
    (dirs["done"] / "study_done.json").write_text(finished_record)
    jobs = [
        bench.Job("c/0/a/pretrain", dirs["ok"], _leaves_mark(marks / "ok")),
        bench.Job("c/0/b/pretrain", dirs["bad"], _leaves_mark(marks / "bad", exit_code=1)),
        bench.Job("c/0/b/finetune", dirs["child"], _leaves_mark(marks / "child"), ["c/0/b/pretrain"]),
        # finished in an earlier invocation: not run again, and what needs it runs
        bench.Job("c/0/x/pretrain", dirs["done"], _leaves_mark(marks / "done", exit_code=1)),
        bench.Job("c/0/x/finetune", dirs["after_done"], _leaves_mark(marks / "after_done"), ["c/0/x/pretrain"]),
    ]
    bench.run_jobs(jobs, workers=2, log_dir=tmp_path)
    ran = {path.name: path.read_text().count("ran") for path in marks.iterdir()}
    assert ran == {"ok": 1, "bad": 1, "after_done": 1}  # each once; "child" needs a failed run, "done" is done
    assert (dirs["ok"] / "study_done.json").exists() and (dirs["after_done"] / "study_done.json").exists()
    assert not (dirs["bad"] / "study_done.json").exists() and not (dirs["child"] / "study_done.json").exists()
    assert (dirs["done"] / "study_done.json").read_text() == finished_record  # its record is the earlier run's
    # A second invocation over the same tree starts only what is still unfinished (the failed run, which
    # fails again, so its child is skipped again).
    bench.run_jobs(jobs, workers=2, log_dir=tmp_path)
    ran = {path.name: path.read_text().count("ran") for path in marks.iterdir()}
    assert ran == {"ok": 1, "bad": 2, "after_done": 1}


def test_verdict_needs_every_seed_to_agree_and_to_beat_the_spread():
    def results(random, ps):
        return {"csl": {"random": {s: {"bleu4": v} for s, v in enumerate(random)},
                        "ps_log": {s: {"bleu4": v} for s, v in enumerate(ps)}}}

    clear = report.paired(results([10, 11, 12], [20, 21, 22]), "csl", "ps_log", "bleu4")
    assert clear["mean"] == pytest.approx(10) and clear["beyond_spread"]
    mixed = report.paired(results([10, 11, 12], [12, 13, 11.5]), "csl", "ps_log", "bleu4")
    assert not mixed["beyond_spread"]  # one seed goes the other way
    small = report.paired(results([10, 20, 30], [11, 21, 31]), "csl", "ps_log", "bleu4")
    assert not small["beyond_spread"]  # same sign, but 1 point against a seed std of 10


def _fake_run(root: Path, corpus: str, seed: int, arm: str, bleu4: float, r1: float) -> None:
    runs = root / corpus / f"seed{seed}" / arm
    (runs / "finetune" / "reports").mkdir(parents=True)
    (runs / "finetune" / "study_done.json").write_text(json.dumps({"seconds": 60}))
    metrics = {m: bleu4 + 10 for m in report.METRICS} | {"bleu4": bleu4}
    (runs / "finetune" / "reports" / "test.json").write_text(json.dumps(metrics))
    if arm != "translation_only":
        (runs / "pretrain").mkdir()
        (runs / "pretrain" / "study_done.json").write_text(json.dumps({"seconds": 30}))
        (runs / "pretrain" / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "loss": 1.0}) + "\n"
            + json.dumps({"step": 2, "eval": {"dev_v2t_r1": r1, "dev_t2v_r1": r1 + 1}}) + "\n")


def test_report_tables_the_finished_runs_and_keeps_the_discussion(tmp_path):
    args = _args(tmp_path, corpora=["csl"], arms=["translation_only", "random", "ps_log"], seeds=[0, 1])
    root = Path(args.out)
    for seed in (0, 1):
        _fake_run(root, "csl", seed, "translation_only", 5.0 + seed, 0)
        _fake_run(root, "csl", seed, "random", 20.0 + seed, 50.0)
        _fake_run(root, "csl", seed, "ps_log", 30.0 + seed, 60.0 + seed)
    results_dir = Path(args.results)
    results_dir.mkdir()
    (results_dir / "quality.md").write_text(f"old table\n{report.DISCUSSION_MARK}\nWhat it means, by a person.\n")
    path = report.write_report(root, args, bench.plan_jobs(args), results_dir)
    text = path.read_text()
    assert "| **Pair Selection, log curriculum (SCL-SLT)** | 2 | " in text
    assert "30.5 ± 0.7" in text  # ps_log BLEU-4 over seeds 0 and 1
    assert "+10.0 (+10.0, +10.0) **beyond spread**" in text
    assert "old table" not in text and text.endswith("\nWhat it means, by a person.\n")
    assert (results_dir / "quality" / "quality_bleu4_r1.png").stat().st_size > 0
    saved = json.loads((results_dir / "quality.json").read_text())
    assert saved["results"]["csl"]["random"]["1"]["dev_v2t_r1"] == 50.0
    assert "Runs not finished when this report was written: 0 of 10." in text  # only the arms asked for count


def test_negative_overlap_finds_the_near_paraphrases_that_pair_selection_ranks_hardest(monkeypatch):
    overlap = _load("negative_overlap")
    jaccard, one_apart = overlap.overlap_matrices(["rain in the north", "rain in the south", "sun all day"])
    assert one_apart[0, 1] and not one_apart[0, 2] and jaccard[0, 1] == pytest.approx(3 / 5) and jaccard[0, 2] == 0

    # 20 samples, one sentence each; sample i and i + 10 are one word apart. At the last reference checkpoint
    # exactly those pairs became similar (delta = 1), every other negative pair stayed orthogonal (delta = 0).
    import torch

    from recipe.trajectory_store import Trajectory

    n, groups = 20, 10
    texts = [f"w{i % groups} a{i % groups} b{i % groups} {'north' if i < groups else 'south'}" for i in range(n)]
    first = torch.eye(n, 32)
    last = torch.nn.functional.one_hot(torch.arange(n) % groups, 32).float()
    embeddings = torch.stack([first, last]).half()
    trajectory = Trajectory(epochs=[1, 2], sample_ids=torch.arange(n), sentence_ids=torch.arange(n),
                            video=embeddings, text=embeddings, paths=[Path("ref/ref-1"), Path("ref/ref-2")])
    monkeypatch.setattr(overlap, "load_trajectory", lambda run, load_tokens: trajectory)
    monkeypatch.setattr(overlap, "load_index", lambda corpus, split: argparse.Namespace(sample_id=list(range(n)), text=texts))
    result = overlap.analyse("ref", "corpus", epochs=3, batch_size=4, seed=0)

    quintiles = result["by PS score quintile"]
    assert quintiles["5 hardest"]["one_word_apart"] == pytest.approx(n / quintiles["5 hardest"]["pairs"])  # 20 ordered partner pairs
    assert all(quintiles[q]["one_word_apart"] == 0 for q in ("1 easiest", "2", "3", "4"))
    assert result["all negatives"]["pairs"] == n * (n - 1)
    last_epoch = result["in-batch"]["epoch 2 (alpha 1.00)"]
    assert last_epoch["PS batches"]["one_word_apart"] > last_epoch["random batches"]["one_word_apart"]
    assert "| PS score quintile 5 hardest |" in "\n".join(overlap.markdown({"run": result}))
