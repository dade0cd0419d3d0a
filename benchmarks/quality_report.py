"""Aggregate the quality study (benchmarks/bench_quality.py) into results/quality.md, quality.json and plots.

Per corpus: every arm's test BLEU-1..4, ROUGE-L and chrF after finetuning and its dev retrieval R@1 after
pretraining (mean +- std over seeds); the comparisons the paper makes, each a paired difference over seeds with
a 95% interval that also counts test-set sampling (`quality_stats.py` says how); the cost of each arm in wall
time and optimizer steps, its reference run included; the reference runs' trajectory categories next to the
paper's, overall and per ground-truth pair kind; twins per batch in Pair Selection vs random batches.

Reads the runs' records (`quality_records.py`), not their run directories, which may be gone; first archives what
finished since. Everything after the line `<!-- discussion -->` in an existing quality.md is kept: that is where
a person writes what the numbers mean.
"""
from __future__ import annotations

import json
import math
import platform
import shlex
import statistics
import sys
from datetime import date
from pathlib import Path

from bench_quality import ARMS, MAIN_CORPORA, MECHANISM_CORPUS, archive_finished, seeds_of
from quality_records import RETRIEVAL, load, record_path, references_path, versions
from quality_stats import SentenceStats, paired_difference, pooled_difference, t_quantile

DISCUSSION_MARK = "<!-- discussion -->"
PAPER_TRAJECTORIES = {"high_to_low": "36%", "stays_high": "32%", "low_to_high": "18%"}
# (arm, baseline, what it answers): the paper's claims first.
MAIN_COMPARISONS = (
    ("scl", "cl", "SCL-SLT vs CL-SLT: the paper's claim (both plain InfoNCE)"),
    ("scl", "cl_masked", "SCL-SLT vs CL with same-sentence masking (ours)"),
    ("scl_masked", "cl_masked", "Pair Selection when both mask same-sentence pairs"),
    ("cl_masked", "cl", "same-sentence masking, random negatives"),
    ("cl", "translation_only", "contrastive pretraining vs none (same steps)"),
    ("scl_self", "scl", "--reference-run self vs the two-run method"),
    ("scl_self", "cl", "--reference-run self vs CL-SLT"),
    ("scl_iid", "scl", "translation loss on i.i.d. batches (ours) vs on PS batches"),
)
MECHANISM_COMPARISONS = (("scl", "cl", "SCL-SLT vs CL-SLT where false negatives are frequent"),)
ABLATION_COMPARISONS = (
    ("scl_easy", "scl", "easy only vs log"), ("scl_hard", "scl", "hard only vs log"),
    ("scl_linear", "scl", "linear vs log"), ("scl_sqrt", "scl", "sqrt vs log"),
    ("scl_from2", "scl", "trajectory from epoch 2 vs 1"), ("scl_from3", "scl", "trajectory from epoch 3 vs 1"),
    ("scl_cls", "scl", "CLS vs token-level PS score"), ("scl_mean", "scl", "mean-pooled vs token-level PS score"),
    ("scl_mean", "scl_cls", "mean-pooled vs CLS PS score"), ("scl_last", "scl", "last checkpoint only vs delta"),
)


# --- what finished ----------------------------------------------------------------------------------------
def load_legacy(args) -> dict:
    """The earlier sittings' results (`--legacy`), or empty ones."""
    if not args.legacy:
        return {"results": {}, "comparisons": {}, "trajectories": {}, "twins": {}}
    return json.loads(Path(args.legacy).read_text())


def collect(args, jobs: list, legacy: dict) -> dict:
    """results[corpus][arm][seed] = {metrics..., "stats": SentenceStats, "seconds", "steps"} of the archived
    arms (`quality_records.py`: the run directories themselves may be gone); an earlier sitting's run has its
    scores but no "stats" (its hypotheses are lost)."""
    results: dict = {}
    records = Path(args.records).resolve()
    references: dict[str, list[str]] = {}
    for job in jobs:
        if job.stage != "finetune" or not job.archived:
            continue
        if job.legacy == "kept":
            row = {**legacy["results"][job.corpus][job.arm][str(job.seed)], "stats": None}
            results.setdefault(job.corpus, {}).setdefault(job.arm, {})[job.seed] = row
            continue
        if job.corpus not in references:
            references[job.corpus] = load(references_path(records, job.corpus))["references"]
        finetune = load(job.record)
        row = dict(finetune["test"])
        row["stats"] = SentenceStats(finetune["hypotheses"], references[job.corpus])
        row["own_seconds"], row["own_steps"] = finetune["seconds"], finetune["steps"]
        arm = ARMS[job.arm]
        if arm.pretrain is not None:
            pretrain = load(record_path(records, job.corpus, job.seed, job.arm, "pretrain"))
            row.update({k: pretrain[k] for k in RETRIEVAL if k in pretrain})  # percent
            row["own_seconds"] += pretrain["seconds"]
            row["own_steps"] += pretrain["steps"]
        row["seconds"], row["steps"] = row["own_seconds"], row["own_steps"]
        if arm.reference:  # two-run Pair Selection pays for its reference run too
            reference = load(record_path(records, job.corpus, job.seed, arm.reference, "pretrain"))
            row["seconds"] += reference["seconds"]
            row["steps"] += reference["steps"]
        results.setdefault(job.corpus, {}).setdefault(job.arm, {})[job.seed] = row
    return results


# --- numbers ----------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def seed_interval(arm: dict, base: dict, metric: str) -> dict | None:
    """Paired difference over seeds alone (for dev retrieval, which has no per-sentence statistics)."""
    seeds = sorted(s for s in set(arm) & set(base) if metric in arm[s] and metric in base[s])
    if not seeds:
        return None
    diffs = [arm[s][metric] - base[s][metric] for s in seeds]
    mean = statistics.fmean(diffs)
    half = t_quantile(len(seeds) - 1) * statistics.stdev(diffs) / math.sqrt(len(seeds)) if len(seeds) > 1 else math.inf
    return {"metric": metric, "seeds": seeds, "per_seed": diffs, "mean": mean, "low": mean - half, "high": mean + half}


def compare(results: dict, corpus: str, arm: str, base: str, resamples: int, earlier: dict | None) -> dict | None:
    """arm - base over their common seeds: those with hypotheses bootstrapped here, pooled with the earlier
    sittings' comparison `earlier` (`quality_stats.pooled_difference`) for the seeds whose hypotheses are lost."""
    mine, other = results.get(corpus, {}).get(arm), results.get(corpus, {}).get(base)
    if not mine or not other or not set(mine) & set(other):
        return None
    seeds = set(mine) & set(other)
    later = {s for s in seeds if mine[s]["stats"] is not None and other[s]["stats"] is not None}
    if seeds - later and (earlier is None or set(earlier["bleu4"]["seeds"]) != seeds - later):
        raise ValueError(f"{corpus}: {arm} - {base}: seeds {sorted(seeds - later)} have no hypotheses and no "
                         f"earlier comparison over exactly them in --legacy")
    out = {}
    for metric in ("bleu4", "bleu1", "rouge_l", "chrf"):
        found = None
        if later:
            found = paired_difference({s: mine[s]["stats"] for s in later}, {s: other[s]["stats"] for s in later},
                                      metric, resamples=resamples)
        if seeds - later:
            found = pooled_difference(earlier[metric], found)
        out[metric] = found.as_dict()
    for metric in RETRIEVAL:
        found = seed_interval(mine, other, metric)
        if found:
            out[metric] = found
    return out


def verdict(diff: dict) -> str:
    if diff["low"] > 0:
        return "**better**"
    if diff["high"] < 0:
        return "**worse**"
    return "no difference shown"


def interval(diff: dict | None) -> str:
    if not diff:
        return "-"
    return f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


# --- trajectories and twins ------------------------------------------------------------------------------
def trajectory_tables(root: Path, args, results_dir: Path, legacy: dict) -> dict:
    """The reference runs' (cl) trajectory categories, as `recipe.analyze_trajectories` found them with the
    corpus's ground truth when each run was archived; mean shares over seeds, overall and per pair kind. The
    first seed's plots go next to the report while its run's analysis is still on disk. The earlier sittings'
    per-seed shares come first."""
    tables: dict = {}
    records = Path(args.records).resolve()
    for corpus in args.corpora:
        earlier = json.loads(json.dumps(legacy["trajectories"].get(corpus, {})))  # a copy: its lists grow below
        overall: dict[str, list[float]] = earlier.get("overall", {})
        by_kind: dict[str, dict[str, list[float]]] = earlier.get("by_kind", {})
        for seed in seeds_of(args, corpus):
            path = record_path(records, corpus, seed, "cl", "pretrain")
            summary = load(path).get("trajectory_categories") if path.exists() else None
            if summary is None:
                continue
            for category, share in summary["shares"].items():
                overall.setdefault(category, []).append(100 * share)
            for kind, found in summary.get("by_kind", {}).items():
                if not isinstance(found, dict):  # has_gloss / has_signer: what the corpus could tell
                    continue
                for category, share in found["shares"].items():
                    by_kind.setdefault(kind, {}).setdefault(category, []).append(100 * share)
                by_kind[kind].setdefault("pairs", []).append(found.get("pairs", 0))
            if seed == seeds_of(args, corpus)[0]:
                for plot in (root / "analysis" / corpus / f"seed{seed}").glob("*.png"):
                    (results_dir / "quality" / f"trajectories_{corpus}_{plot.name}").write_bytes(plot.read_bytes())
        if overall:
            tables[corpus] = {"overall": overall, "by_kind": by_kind}
    return tables


def twin_tables(args, legacy: dict) -> dict[str, list[str]]:
    """Twins per global batch in Pair Selection batches vs random ones, on one reference run per corpus
    (`benchmarks/bench_sampler.py`'s measurement at alpha 0, 0.5 and 1, made when the run was archived): the
    earlier sittings' (their seed 0), else the first seed whose record has it."""
    tables = dict(legacy["twins"])
    for corpus in args.corpora:
        for seed in seeds_of(args, corpus):
            path = record_path(Path(args.records).resolve(), corpus, seed, "cl", "pretrain")
            if corpus not in tables and path.exists() and "twins" in load(path):
                tables[corpus] = load(path)["twins"]
    return {corpus: rows for corpus, rows in tables.items() if corpus in args.corpora}


# --- plots -----------------------------------------------------------------------------------------------
def plot_arms(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(results)
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.2), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        arms = [a for a in ARMS if a in results[corpus]]
        for x, arm in enumerate(arms):
            values = [r["bleu4"] for r in results[corpus][arm].values()]
            ax.bar(x, statistics.fmean(values), color="tab:red" if arm.startswith("scl") else "tab:gray", alpha=0.6)
            ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right")
        ax.set_title(f"{corpus}: test BLEU-4 (bars: mean; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_differences(comparisons: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{corpus}: {arm} − {base}", found["bleu4"]) for corpus, items in comparisons.items()
            for (arm, base, _), found in items if found]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    for y, (label, diff) in enumerate(reversed(rows)):
        ax.plot([diff["low"], diff["high"]], [y, y], color="tab:blue")
        ax.scatter([diff["mean"]], [y], color="tab:blue", zorder=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel("test BLEU-4 difference, 95% interval (seeds + test sentences)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the report -------------------------------------------------------------------------------------------
def write_report(root: Path, args, jobs: list, results_dir: Path, resamples: int = 1000) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    plots = results_dir / "quality"
    plots.mkdir(exist_ok=True)
    archive_finished(args, jobs)  # runs finished in their directories, not yet recorded
    legacy = load_legacy(args)
    results = collect(args, jobs, legacy)
    comparisons: dict = {}
    for corpus in results:
        items = (MAIN_COMPARISONS if corpus in MAIN_CORPORA else ()) + \
                (MECHANISM_COMPARISONS if corpus == MECHANISM_CORPUS else ()) + \
                (ABLATION_COMPARISONS if corpus == args.ablation_corpus else ())
        earlier = {(c["arm"], c["baseline"]): c for c in legacy["comparisons"].get(corpus, []) if "bleu4" in c}
        comparisons[corpus] = [(item, compare(results, corpus, item[0], item[1], resamples,
                                              earlier.get((item[0], item[1])))) for item in items]
    tables = trajectory_tables(root, args, results_dir, legacy)
    twins = twin_tables(args, legacy)
    if results:
        plot_arms(results, plots / "quality_bleu4.png")
        plot_differences(comparisons, plots / "quality_differences.png")

    study_args = [a for a in sys.argv[1:] if a not in ("--report",)]
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quality.py " + shlex.join(study_args)
    finished = [j for j in jobs if j.archived]
    recorded = [j for j in finished if not j.legacy]
    kept = [j for j in finished if j.legacy]
    lost = [j.name for j in jobs if j.legacy == "lost" and j.stage == "finetune"]
    per_corpus = "".join(f"; {corpus}: {seeds[0]}-{seeds[-1]}" for corpus, seeds in args.seeds_for.items())
    legacy_seconds = sum(legacy["results"][j.corpus][j.arm][str(j.seed)]["own_seconds"] for j in kept
                         if j.stage == "finetune")  # an earlier run's own_seconds: its pretraining and finetuning
    cpu_hours = (sum(load(j.record)["seconds"] for j in recorded) + legacy_seconds) / 3600
    reruns = sum(load(j.record).get("reproduced", 0) for j in recorded)
    differing = sorted(str(p.relative_to(Path(args.records).resolve()))
                       for p in Path(args.records).resolve().glob("*/*/*/*.rerun.json"))
    lines = [
        "# Quality study: the paper's tables at CPU scale", "",
        f"Generated by `benchmarks/quality_report.py` on {date.today()} ({platform.machine()}, "
        f"{_cpu_count()} CPU cores; {_versions()}). Command (from the repository root; resumable, "
        f"`--report` only aggregates):", "", f"```bash\n{command}\n```", "",
        f"Finished runs: {len(finished)} of {len(jobs)}, {cpu_hours:.1f} hours of run time in all (each run one "
        f"CPU thread, {args.workers} at a time). " + provenance(args, kept, reruns, differing), "",
        f"Setup: corpora from `sharded_data.synth --preset CORPUS --seed 0 --video-format "
        f"{args.video_format}` ({', '.join(args.corpora)}); `tiny` "
        f"model, {args.frame_size} px frames, at most {args.max_frames} frames, batch {args.batch_size}, lr "
        f"{args.lr}, one CPU rank. Pretraining {args.pretrain_epochs} epochs (contrastive + translation), "
        f"finetuning {args.finetune_epochs} epochs; translation only: {args.pretrain_epochs + args.finetune_epochs} "
        f"finetuning epochs. Test decoding: beam {args.num_beams}. Seeds {args.seeds}{per_corpus} "
        f"(ablations: the first {args.ablation_seeds}, on {args.ablation_corpus}).", "",
        "Intervals: 95%, paired over seeds (t) with the test-sentence bootstrap added in variance "
        "(`benchmarks/quality_stats.py`); dev R@1: over seeds only. An interval that excludes 0 says **better** or "
        "**worse**; otherwise no difference was shown.", "",
    ]
    for corpus, arms in results.items():
        lines += [f"## {corpus}", "",
                  "| arm | seeds | BLEU-1 | BLEU-4 | ROUGE-L | chrF | dev R@1 v2t | dev R@1 t2v | minutes (incl. reference) | "
                  "optimizer steps (incl. reference) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for arm, rows in ((a, arms[a]) for a in ARMS if a in arms):
            cells = [fmt([r[m] for r in rows.values() if m in r]) for m in ("bleu1", "bleu4", "rouge_l", "chrf", *RETRIEVAL)]
            minutes = statistics.fmean(r["seconds"] for r in rows.values()) / 60
            own = statistics.fmean(r["own_seconds"] for r in rows.values()) / 60
            steps = statistics.fmean(r["steps"] for r in rows.values())
            own_steps = statistics.fmean(r["own_steps"] for r in rows.values())
            cost = f"{minutes:.1f}" if minutes == own else f"{own:.1f} ({minutes:.1f})"
            step_cost = f"{own_steps:.0f}" if steps == own_steps else f"{own_steps:.0f} ({steps:.0f})"
            lines.append(f"| {ARMS[arm].title} (`{arm}`) | {len(rows)} | " + " | ".join(cells) + f" | {cost} | {step_cost} |")
        lines += ["", "| comparison | seeds | BLEU-4 | BLEU-1 | ROUGE-L | chrF | dev R@1 v2t | BLEU-4 per seed | "
                  "BLEU-4: se seeds / se sentences | verdict (BLEU-4) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (arm, base, what), found in comparisons.get(corpus, []):
            if not found:
                continue
            b4 = found["bleu4"]
            per_seed = ", ".join(f"{d:+.1f}" for d in b4["per_seed"])
            lines.append(f"| {what}: `{arm}` − `{base}` | {len(b4['seeds'])} | " +
                         " | ".join(interval(found.get(m)) for m in ("bleu4", "bleu1", "rouge_l", "chrf", "dev_v2t_r1")) +
                         f" | {per_seed} | {b4['se_seed']:.2f} / {b4['se_sentence']:.2f} | {verdict(b4)} |")
        lines.append("")
    if tables:
        lines += ["## Trajectories of the reference runs (CL-SLT), next to the paper's", "",
                  "Negative pairs by their similarity at the first and the last reference checkpoint (relative "
                  "thresholds: quantiles 0.5 / 0.3 of all similarities), mean share over seeds "
                  "(`python -m recipe.analyze_trajectories RUN --relative --data CORPUS`).", "",
                  "| corpus | pairs | high→low | stays high | low→high | stays low | other |", "|---|---|---|---|---|---|---|"]
        for corpus, found in tables.items():
            shares = found["overall"]
            lines.append(f"| {corpus} | all negatives | " + " | ".join(fmt(shares.get(c, [])) + "%" for c in
                         ("high_to_low", "stays_high", "low_to_high", "stays_low", "other")) + " |")
            for kind, kind_shares in found["by_kind"].items():
                count = statistics.fmean(kind_shares.get("pairs", [0]))
                lines.append(f"| {corpus} | {kind} ({count:.0f} pairs) | " + " | ".join(
                    fmt(kind_shares.get(c, [])) + "%" for c in
                    ("high_to_low", "stays_high", "low_to_high", "stays_low", "other")) + " |")
        lines += ["| the paper (PHOENIX-2014T) | all negatives | " + " | ".join(
            PAPER_TRAJECTORIES.get(c, "") for c in ("high_to_low", "stays_high", "low_to_high", "stays_low", "other"))
            + " |", ""]
    if twins:
        lines += ["## Twins (same-sentence pairs) per global batch: Pair Selection vs random", "",
                  "Mean same-sentence pairs per batch of the curriculum sampler at a fixed alpha, on the reference "
                  "run of seed 0 (`benchmarks/bench_sampler.py`'s measurement; 'mask' = `--same-sentence mask`, "
                  "'negative' = the paper's plain InfoNCE).", "",
                  "| trajectories | rule | pool | alpha 0 | alpha 0.5 | alpha 1 |", "|---|---|---|---:|---:|---:|"]
        for rows in twins.values():
            lines += [row for row in rows if not row.startswith(("| trajectories", "|---"))]
        lines.append("")
    if results:
        lines += ["## Plots", "", "![BLEU-4 per arm](quality/quality_bleu4.png)", "",
                  "![differences with intervals](quality/quality_differences.png)", ""]
        lines += [f"![{p.stem}](quality/{p.name})" for p in sorted(plots.glob("trajectories_*.png"))] + [""]
    missing = [j.name for j in jobs if not j.archived and not j.legacy]
    lines += [f"Runs not finished when this report was written: {len(missing)} of {len(jobs)}"
              + (f" ({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''})" if missing else "") + "."]
    if lost:
        lines += [f"Never run, and not runnable now: {len(lost)} arms of the earlier sittings' seeds (a new run could "
                  f"not be paired with that seed's lost hypotheses): {', '.join(lost)}."]
    lines.append("")

    report = results_dir / "quality.md"
    discussion = ""
    if report.exists() and DISCUSSION_MARK in report.read_text():
        discussion = report.read_text().split(DISCUSSION_MARK, 1)[1]
    report.write_text("\n".join(lines) + f"\n{DISCUSSION_MARK}{discussion}")
    plain = {corpus: {arm: {seed: {k: v for k, v in row.items() if k != "stats"} | {"hypotheses": row["stats"] is not None}
                            for seed, row in rows.items()}
                      for arm, rows in arms.items()} for corpus, arms in results.items()}
    (results_dir / "quality.json").write_text(json.dumps(
        {"settings": {k: _portable(v) for k, v in vars(args).items()}, "results": plain,
         "comparisons": {c: [{"arm": a, "baseline": b, "question": w, **(found or {})} for (a, b, w), found in items]
                         for c, items in comparisons.items()},
         "trajectories": tables}, indent=1, default=str))
    print(f"report: {report}")
    return report


def provenance(args, kept: list, reruns: int, differing: list[str]) -> str:
    """Where the numbers come from: records, the earlier sittings' frozen results, reruns that disagreed."""
    text = (f"Each run's record (test hypotheses, scores, steps, wall time, dev R@1, trajectory categories) is in "
            f"`{_portable(args.records)}/`.")
    if kept:
        text += (f" {len(kept)} runs are from earlier sittings whose run directories were lost: their scores, costs, "
                 f"per-seed differences and test-sentence terms come from `{_portable(args.legacy)}`; a comparison "
                 f"adding later seeds to them bounds its sentence term from above (`quality_stats.pooled_difference`).")
    if reruns or differing:
        text += (f" Runs started again because another run needed their directory: {reruns} reproduced their record "
                 f"exactly, {len(differing)} did not{(' (' + ', '.join(differing) + ')') if differing else ''}.")
    return text


def _portable(value):
    """Paths inside the repository as relative paths: the results file must not name this machine's checkout."""
    if isinstance(value, str) and Path(value).is_absolute():
        repo = Path(__file__).resolve().parents[1]
        return str(Path(value).resolve().relative_to(repo)) if Path(value).resolve().is_relative_to(repo) else value
    return value


def _versions() -> str:
    return ", ".join(f"{name} {version}" for name, version in versions().items())


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))
