"""The quality study's plan and report (benchmarks/bench_quality.py, benchmarks/quality_report.py).

The study itself takes hours of CPU; here its plan is checked against the recipe's own parsers (every run
it would start is a valid command line with the settings the arm claims) and its aggregation is run on a
fabricated tree of finished runs, so neither can rot.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
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
records = _load("quality_records")


def _args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    return bench.parse_args(["--out", str(tmp_path / "study"), "--results", str(tmp_path / "results"),
                             "--records", str(tmp_path / "records"), "--legacy", "", *argv])


def _parse(job):
    module, argv = job.command[2], job.command[3:]
    return parse_config(PretrainConfig if module == "recipe.pretrain" else FinetuneConfig, argv)


def test_every_planned_run_is_a_valid_command_with_the_arms_settings(tmp_path):
    """Every command parses with the recipe's own parser and carries its arm's settings; the paper's SCL-SLT is
    the recipe's defaults plus --negatives ps --same-sentence negative. (Broken variant tried: scl reading
    cl_masked's trajectory: the reference check fails.)"""
    jobs = bench.plan_jobs(_args(tmp_path))
    main, core = len(bench.MAIN_ARMS), len(bench.CORE_ARMS)
    pretrainings = {corpus: sum(bench.ARMS[a].pretrain is not None for a in arms) for corpus, arms in
                    (("main", bench.MAIN_ARMS), ("mechanism", bench.MECHANISM_ARMS), ("ablation", bench.ABLATION_ARMS))}
    expected = (2 * 5 * (main + pretrainings["main"]) + 5 * (2 + pretrainings["mechanism"])
                + 3 * (len(bench.ABLATION_ARMS) + pretrainings["ablation"]))
    assert len(jobs) == expected and core == 3
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        config = _parse(job)
        assert config.seed == job.seed and config.data.endswith(f"corpora/{job.corpus}")
        arm = bench.ARMS[job.arm]
        if job.stage == "pretrain":
            assert config.epochs == 6 and config.ps_keep_fraction == 1.0  # the paper: no in-loss mask
            assert config.negatives == ("random" if job.arm.startswith("cl") else "ps")
            assert config.record_trajectory_every == (1 if arm.records or job.arm == "scl_self" else 0)
            if arm.reference:
                reference = by_name[f"{job.corpus}/{job.seed}/{arm.reference}/pretrain"]
                assert job.needs == [reference.name]
                if arm.trajectory_from > 1:
                    assert job.reference_view == (reference.out, Path(config.reference_run), arm.trajectory_from)
                else:
                    assert config.reference_run == str(reference.out)
        else:  # the same optimizer steps for every arm: translation only gets the pretraining epochs too
            assert config.epochs == (12 if job.arm == "translation_only" else 6)
            assert bool(config.init) == (job.arm != "translation_only")
    settings = {j.arm: _parse(j) for j in jobs if j.name.startswith("csl-like/0/") and j.stage == "pretrain"}
    scl = settings["scl"]
    assert (scl.same_sentence, scl.curriculum, scl.ps_score, scl.ps_similarity, scl.translation_batches) == (
        "negative", "log", "delta", "loss", "same") and scl.similarity == "token"
    assert settings["cl"].same_sentence == "negative" and settings["cl_masked"].same_sentence == "mask"
    assert settings["scl_masked"].same_sentence == "mask"
    assert settings["scl_masked"].reference_run.endswith("csl-like/seed0/cl_masked/pretrain")
    assert settings["scl"].reference_run.endswith("csl-like/seed0/cl/pretrain")
    assert settings["scl_self"].reference_run == "self" and settings["scl_self"].self_reference_checkpoints == 3
    assert settings["scl_iid"].translation_batches == "iid"
    assert settings["scl_easy"].curriculum == "easy" and settings["scl_sqrt"].curriculum == "sqrt"
    assert settings["scl_cls"].ps_similarity == "cls" and settings["scl_last"].ps_score == "last"


def test_the_main_comparison_runs_first_and_extra_seeds_only_for_it(tmp_path):
    jobs = bench.plan_jobs(_args(tmp_path, "--seeds", "0", "1", "2", "3", "4", "5", "6"))
    tiers = [j.tier for j in jobs]
    assert tiers == sorted(tiers)
    first = [j for j in jobs if j.tier == 0]
    assert {j.arm for j in first} == set(bench.CORE_ARMS) and {j.corpus for j in first} == set(bench.MAIN_CORPORA)
    assert {j.seed for j in jobs if j.seed >= 5} == {5, 6}
    assert {j.arm for j in jobs if j.seed >= 5} == set(bench.CORE_ARMS)
    assert all(j.tier == 4 for j in jobs if j.seed >= 5)


def test_one_corpus_can_have_more_seeds_than_the_others(tmp_path):
    jobs = bench.plan_jobs(_args(tmp_path, "--seeds", "0", "1", "--seeds-for", "phoenix-like=7"))
    seeds = {corpus: {j.seed for j in jobs if j.corpus == corpus} for corpus in bench.CORPORA}
    assert seeds == {"csl-like": {0, 1}, "phoenix-like": set(range(7)), "dense-neighbours": {0, 1}}
    assert {j.arm for j in jobs if j.seed >= 5} == set(bench.CORE_ARMS)
    with pytest.raises(SystemExit):
        _args(tmp_path, "--seeds-for", "phoenix=16")  # not a preset: a clear error, not an empty plan


def test_an_ablation_alone_brings_its_reference_run(tmp_path):
    names = [j.name for j in bench.plan_jobs(_args(tmp_path, "--arms", "scl_hard", "--seeds", "1"))]
    assert names == ["csl-like/1/cl/pretrain", "csl-like/1/scl_hard/pretrain", "csl-like/1/scl_hard/finetune"]


def test_a_reference_view_starts_the_trajectory_later(tmp_path):
    from recipe.trajectory_store import list_reference_checkpoints

    reference = tmp_path / "ref"
    (reference / "trajectories").mkdir(parents=True)
    for epoch in range(1, 7):
        (reference / "trajectories" / f"ref-{epoch:04d}.safetensors").write_text(str(epoch))
    bench.make_reference_view(reference, tmp_path / "view", 3)
    bench.make_reference_view(reference, tmp_path / "view", 3)  # again: idempotent
    found = list_reference_checkpoints(tmp_path / "view")
    assert [epoch for epoch, _ in found] == [3, 4, 5, 6]
    assert [path.read_text() for _, path in found] == ["3", "4", "5", "6"]


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


def _fake_run(root: Path, corpus: str, seed: int, arm: str, hypotheses: list[str], references: list[str],
              r1: float) -> None:
    """A finished run of the study: its test report (scores from the recipe's metric, hypotheses file) and, for
    a pretrained arm, its pretraining record with the final dev retrieval."""
    from recipe.evaluate import TranslationRow, write_report
    from recipe.metrics import score_translations

    runs = root / corpus / f"seed{seed}" / arm
    rows = [TranslationRow(i, h, r) for i, (h, r) in enumerate(zip(hypotheses, references))]
    write_report(runs / "finetune" / "reports", "test", score_translations(hypotheses, references), rows)
    (runs / "finetune" / "study_done.json").write_text(json.dumps({"seconds": 60}))
    (runs / "finetune" / "metrics.jsonl").write_text(json.dumps({"step": 90, "loss": 1.0}) + "\n")
    if arm != "translation_only":
        (runs / "pretrain").mkdir()
        (runs / "pretrain" / "study_done.json").write_text(json.dumps({"seconds": 30}))
        (runs / "pretrain" / "metrics.jsonl").write_text(
            json.dumps({"step": 90, "loss": 1.0}) + "\n"
            + json.dumps({"step": 90, "eval": {"dev_v2t_r1": r1, "dev_t2v_r1": r1 + 1}}) + "\n")


REFERENCES = [f"{day} in the {region} {weather} at {n} degrees" for day in ("today", "tomorrow", "tonight", "later")
              for region in ("north", "south", "east", "west") for weather in ("rain", "snow", "fog")
              for n in ("five", "ten")]


def test_report_intervals_costs_and_discussion(tmp_path):
    """Fabricated finished runs: scl translates 24 more of 96 sentences right than cl in every seed. The report
    names the interval and a positive verdict for scl - cl, charges scl its reference run, keeps the
    discussion, and writes the json; with the run directories deleted it is written again, the same, from the
    runs' records. (Broken variants tried: the reference run's cost left out of two-run PS: the cost cell
    fails; the finetune record without its hypotheses: the report fails.)"""
    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "translation_only", "cl", "scl")
    root = Path(args.out)
    wrong = REFERENCES[48:] + REFERENCES[:48]  # another sentence of the set
    for seed in range(5):
        _fake_run(root, "csl-like", seed, "translation_only", wrong, REFERENCES, 0)
        cl = REFERENCES[: 30 + seed] + wrong[30 + seed :]
        scl = REFERENCES[: 54 + seed] + wrong[54 + seed :]
        _fake_run(root, "csl-like", seed, "cl", cl, REFERENCES, 50.0)
        _fake_run(root, "csl-like", seed, "scl", scl, REFERENCES, 55.0 + seed)
    results_dir = Path(args.results)
    (results_dir / "quality").mkdir(parents=True)
    (results_dir / "quality.md").write_text(f"old table\n{report.DISCUSSION_MARK}\nWhat it means, by a person.\n")
    path = report.write_report(root, args, bench.plan_jobs(args), results_dir, resamples=200)
    text = path.read_text()
    assert "old table" not in text and text.endswith("\nWhat it means, by a person.\n")
    row = next(line for line in text.splitlines() if line.startswith("| SCL-SLT vs CL-SLT"))
    assert "| 5 | +" in row and row.endswith("| **better** |")
    assert "| 1.5 (2.0) | 180 (270) |" in text  # scl: own pretrain + finetune, and with cl's reference run
    saved = json.loads((results_dir / "quality.json").read_text())
    assert saved["results"]["csl-like"]["scl"]["2"]["dev_v2t_r1"] == 57.0
    comparison = next(c for c in saved["comparisons"]["csl-like"] if c["arm"] == "scl" and c["baseline"] == "cl")
    assert comparison["bleu4"]["low"] > 0 and comparison["dev_v2t_r1"]["mean"] == pytest.approx(7.0)
    assert (results_dir / "quality" / "quality_differences.png").stat().st_size > 0
    assert "Runs not finished when this report was written: 0 of 25." in text  # only the arms asked for count
    assert "reproduced their record" not in text  # nothing ran twice

    shutil.rmtree(root)  # the run directories are gone (a new checkout): the records are enough
    again = report.write_report(root, args, bench.plan_jobs(args), results_dir, resamples=200).read_text()
    assert _without_date(again) == _without_date(text)
    assert json.loads((results_dir / "quality.json").read_text())["comparisons"] == saved["comparisons"]


def _without_date(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("Generated by"))


def test_archived_runs_run_again_only_when_a_run_still_to_do_needs_their_directory(tmp_path):
    """A new seed of scl needs its cl reference run's trajectory: with cl archived but its directory gone, cl's
    pretraining runs again, not its finetuning; an archived arm nothing needs does not run. (Broken variant
    tried: `still_to_run` without the needs: scl's pretraining waits on a run that never starts.)"""
    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "cl", "scl", "--seeds", "0", "1")
    jobs = bench.plan_jobs(args)
    for job in jobs:
        if job.seed == 0 or job.arm == "cl":
            job.record.parent.mkdir(parents=True, exist_ok=True)
            job.record.write_text("{}")
    names = [j.name for j in bench.still_to_run(jobs)]
    assert names == ["csl-like/1/cl/pretrain", "csl-like/1/scl/pretrain", "csl-like/1/scl/finetune"]
    (jobs[0].out).mkdir(parents=True)
    (Path(args.out) / "csl-like" / "seed1" / "cl" / "pretrain").mkdir(parents=True)
    (Path(args.out) / "csl-like" / "seed1" / "cl" / "pretrain" / "study_done.json").write_text("{}")
    assert [j.name for j in bench.still_to_run(jobs)] == names[1:]  # its directory is back: not again


def test_a_rerun_must_reproduce_its_record(tmp_path):
    """The same finished run archived twice counts one reproduction; a rerun whose hypotheses differ keeps the
    first record and leaves the rerun's next to it. (Broken variant tried: `_write` comparing only the scores:
    a changed hypothesis with equal BLEU passes as reproduced.)"""
    run, record = tmp_path / "run", tmp_path / "records" / "c" / "seed0" / "cl" / "finetune.json"
    references = tmp_path / "records" / "c" / "test_references.json"
    hypotheses = REFERENCES[:40] + REFERENCES[48:56]
    _fake_run(tmp_path, "c", 0, "cl", hypotheses, REFERENCES[:48], 50.0)
    run = tmp_path / "c" / "seed0" / "cl" / "finetune"
    assert records.archive_finetune(run, record, references) == "new"
    assert records.archive_finetune(run, record, references) == "reproduced"
    assert records.load(record)["reproduced"] == 1 and records.load(record)["hypotheses"] == hypotheses
    tsv = run / "reports" / "test.hyp.tsv"
    tsv.write_text(tsv.read_text().replace(REFERENCES[50], REFERENCES[51], 1))
    assert records.archive_finetune(run, record, references) == "differs"
    assert records.load(record)["hypotheses"] == hypotheses
    assert records.load(record.with_suffix(".rerun.json"))["hypotheses"][42] == REFERENCES[51]


def test_trajectory_table_reads_the_analysis_per_pair_kind(tmp_path):
    """The report reads `recipe.analyze_trajectories`' summary, as that module writes it and as the reference
    run's record keeps it: per-kind rows next to the flags saying what the corpus could tell (has_gloss,
    has_signer), which are not rows. (The first real study crashed here: the flags were read as rows.)"""
    from recipe.analyze_trajectories import CATEGORIES

    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "cl", "--seeds", "0", "1")
    root, results_dir = Path(args.out), Path(args.results)
    reference = root / "csl-like" / "seed1" / "cl" / "pretrain"  # seed 1: no twins table (a real trajectory)
    (reference / "trajectories" / "ref-000001").mkdir(parents=True)
    (reference / "study_done.json").write_text(json.dumps({"seconds": 30}))
    (reference / "metrics.jsonl").write_text(json.dumps({"step": 90, "loss": 1.0}) + "\n")
    shares = dict(zip(CATEGORIES, (0.5, 0.25, 0.125, 0.125, 0.0)))
    summary = {"shares": shares, "by_kind": {
        "exact_twin": {"pairs": 4, "counts": {}, "shares": shares},
        "same_signer": {"pairs": 10, "counts": {}, "shares": dict(zip(CATEGORIES, (0.0, 1.0, 0.0, 0.0, 0.0)))},
        "has_gloss": True, "has_signer": True}}
    analysis = root / "analysis" / "csl-like" / "seed1"
    analysis.mkdir(parents=True)
    (analysis / "trajectory_categories.json").write_text(json.dumps(summary))
    bench.archive_finished(args, bench.plan_jobs(args))
    shutil.rmtree(root)
    (results_dir / "quality").mkdir(parents=True)
    tables = report.trajectory_tables(root, args, results_dir, report.load_legacy(args))["csl-like"]
    assert tables["overall"]["high_to_low"] == [50.0]
    assert set(tables["by_kind"]) == {"exact_twin", "same_signer"}
    assert tables["by_kind"]["same_signer"]["stays_high"] == [100.0] and tables["by_kind"]["same_signer"]["pairs"] == [10]


def _legacy_from(results_dir: Path, path: Path) -> Path:
    """An earlier sitting's frozen results, as benchmarks/results/quality_legacy.json keeps them."""
    saved = json.loads((results_dir / "quality.json").read_text())
    path.write_text(json.dumps({key: saved[key] for key in ("results", "comparisons", "trajectories")} | {"twins": {}}))
    return path


def test_seeds_whose_hypotheses_are_lost_pool_with_later_seeds(tmp_path):
    """Five seeds reported, then their run directories and records lost: the legacy file alone gives back the
    same comparison; two later seeds with records pool with them, the sentence term bounded by the weighted
    sum of the two groups' (quality_stats.pooled_difference). (Broken variant tried: pooling the two sentence
    terms in quadrature, as if independent: the bound check fails.)"""
    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "cl", "scl")
    root, results_dir = Path(args.out), Path(args.results)
    wrong = REFERENCES[48:] + REFERENCES[:48]
    for seed in range(7):
        _fake_run(root, "csl-like", seed, "cl", REFERENCES[: 30 + 2 * seed] + wrong[30 + 2 * seed:], REFERENCES, 50.0)
        _fake_run(root, "csl-like", seed, "scl", REFERENCES[: 40 + seed] + wrong[40 + seed:], REFERENCES, 52.0)
    (results_dir / "quality").mkdir(parents=True)
    report.write_report(root, args, bench.plan_jobs(args), results_dir, resamples=200)
    first = json.loads((results_dir / "quality.json").read_text())["comparisons"]["csl-like"][0]["bleu4"]
    legacy = _legacy_from(results_dir, tmp_path / "legacy.json")
    shutil.rmtree(args.records)

    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "cl", "scl", "--legacy", str(legacy))
    jobs = bench.plan_jobs(args)
    assert all(j.archived and j.legacy == "kept" for j in jobs) and bench.still_to_run(jobs) == []
    text = report.write_report(root, args, jobs, results_dir, resamples=200).read_text()
    again = json.loads((results_dir / "quality.json").read_text())["comparisons"]["csl-like"][0]["bleu4"]
    assert again == first and "Finished runs: 20 of 20" in text and "20 runs are from earlier sittings" in text

    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "cl", "scl", "--legacy", str(legacy),
                 "--seeds", *map(str, range(7)))
    jobs = bench.plan_jobs(args)
    assert [j.name for j in bench.still_to_run(jobs)] == []  # seeds 5-6 finished in their run directories
    report.write_report(root, args, jobs, results_dir, resamples=200)
    pooled = json.loads((results_dir / "quality.json").read_text())["comparisons"]["csl-like"][0]["bleu4"]
    stats = {arm: {s: report.SentenceStats(records.load(args_record(args, s, arm))["hypotheses"], REFERENCES)
                   for s in (5, 6)} for arm in ("scl", "cl")}
    later = report.paired_difference(stats["scl"], stats["cl"], "bleu4", resamples=200)
    assert pooled["seeds"] == list(range(7)) and pooled["per_seed"][:5] == first["per_seed"]
    assert pooled["per_seed"][5:] == pytest.approx(later.per_seed)
    assert pooled["se_sentence"] == pytest.approx((5 * first["se_sentence"] + 2 * later.se_sentence) / 7)
    assert pooled["high"] - pooled["mean"] == pytest.approx(
        report.t_quantile(6) * (pooled["se_seed"] ** 2 + pooled["se_sentence"] ** 2) ** 0.5)


def args_record(args, seed: int, arm: str) -> Path:
    return records.record_path(Path(args.records).resolve(), "csl-like", seed, arm, "finetune")


def test_an_arm_an_earlier_sitting_never_ran_on_its_seeds_is_not_run_now(tmp_path):
    """The legacy seeds' missing arms cannot be paired with the lost hypotheses of their seed's other arms:
    they are 'lost', never started; new seeds run in full."""
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"results": {"csl-like": {"cl": {"0": {}, "1": {}}, "scl": {"0": {}, "1": {}},
                                                            "cl_masked": {"0": {}}}}}))
    args = _args(tmp_path, "--corpora", "csl-like", "--arms", "cl", "cl_masked", "scl", "--seeds", "0", "1", "2",
                 "--legacy", str(legacy))
    jobs = bench.plan_jobs(args)
    assert {j.name for j in jobs if j.legacy == "lost"} == {"csl-like/1/cl_masked/pretrain", "csl-like/1/cl_masked/finetune"}
    assert {j.seed for j in bench.still_to_run(jobs)} == {2} and len(bench.still_to_run(jobs)) == 6
