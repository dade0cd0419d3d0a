"""Aggregate the quality study (benchmarks/bench_quality.py) into results/quality.md, quality.json and plots.

Per corpus and arm: test BLEU-1..4, ROUGE-L and chrF of the finetuned model, dev retrieval R@1 of the
pretrained one, as mean +- std over the seeds that finished; the paired per-seed difference of every arm to
random negatives; the trajectory-analysis table of the reference runs next to the paper's; two plots.

The verdict rule, stated once: an arm beats random negatives "beyond the seed spread" when its paired
difference has the same sign for every seed AND the mean difference exceeds the larger of the two arms' seed
standard deviations. With 3 seeds this is a rough screen, not a significance test; the table gives the
numbers to judge by.

Everything after the line `<!-- discussion -->` in an existing quality.md is kept: that is where a person
writes what the numbers mean.
"""
from __future__ import annotations

import json
import platform
import shlex
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

from negative_overlap import analyse as analyse_overlaps
from negative_overlap import markdown as markdown_overlaps

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "chrf")
RETRIEVAL = ("dev_v2t_r1", "dev_t2v_r1")
DISCUSSION_MARK = "<!-- discussion -->"
ARM_TITLES = {
    "translation_only": "translation only (no pretraining, same steps)",
    "random": "random negatives (GFSLT-VLP)",
    "ps_log": "**Pair Selection, log curriculum (SCL-SLT)**",
    "ps_last": "PS, score = last reference checkpoint",
    "ps_no_mask": "PS, same-sentence masking off",
    "ps_easy": "PS, easy-only curriculum",
    "ps_hard": "PS, hard-only curriculum",
    "ps_batches_only": "PS batches, every negative kept",
    "random_contrastive": "random negatives, contrastive-only pretraining",
    "ps_log_contrastive": "PS log, contrastive-only pretraining",
}


def _last_eval(run: Path) -> dict:
    """The final dev evaluation a pretraining run logged."""
    evals = [json.loads(line)["eval"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    return evals[-1] if evals else {}


def collect(root: Path, corpora: list[str], seeds: list[int], arms: list[str]) -> dict:
    """results[corpus][arm][seed] = {metric: value, ..., "seconds": wall seconds of its runs}."""
    results: dict = {}
    for corpus in corpora:
        for arm in arms:
            for seed in seeds:
                runs = root / corpus / f"seed{seed}" / arm
                test = runs / "finetune" / "reports" / "test.json"
                if not (runs / "finetune" / "study_done.json").exists() or not test.exists():
                    continue
                row = {k: json.loads(test.read_text())[k] for k in METRICS}
                row["seconds"] = json.loads((runs / "finetune" / "study_done.json").read_text())["seconds"]
                if arm != "translation_only":
                    pretrain = runs / "pretrain"
                    evaluation = _last_eval(pretrain)
                    row.update({k: evaluation[k] for k in RETRIEVAL if k in evaluation})
                    row["seconds"] += json.loads((pretrain / "study_done.json").read_text())["seconds"]
                results.setdefault(corpus, {}).setdefault(arm, {})[seed] = row
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"


def paired(results: dict, corpus: str, arm: str, metric: str, baseline: str = "random") -> dict | None:
    """Per-seed differences arm - baseline on the seeds both finished, and the verdict rule of the docstring."""
    mine, base = results[corpus].get(arm, {}), results[corpus].get(baseline, {})
    seeds = sorted(set(mine) & set(base))
    if not seeds or any(metric not in mine[s] or metric not in base[s] for s in seeds):
        return None
    diffs = [mine[s][metric] - base[s][metric] for s in seeds]
    mean = statistics.fmean(diffs)
    spread = max(mean_std([mine[s][metric] for s in seeds])[1], mean_std([base[s][metric] for s in seeds])[1])
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    beyond = len(seeds) > 1 and same_sign and abs(mean) > spread
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "spread": spread, "beyond_spread": beyond}


def trajectory_tables(root: Path, corpora: list[str], seeds: list[int], out: Path) -> dict:
    """Run recipe.analyze_trajectories on every finished reference run (absolute and relative thresholds);
    mean shares over seeds. Seed 0's plots are copied next to the report."""
    from recipe.analyze_trajectories import CATEGORIES

    tables: dict = {}
    for corpus in corpora:
        for mode, extra in (("absolute 0.5 / 0.3", []), ("relative (quantiles 0.5 / 0.3)", ["--relative"])):
            shares: dict[str, list[float]] = {c: [] for c in CATEGORIES}
            for seed in seeds:
                reference = root / corpus / f"seed{seed}" / "random" / "pretrain"
                if not (reference / "study_done.json").exists() or not any(reference.glob("trajectories/ref-*")):
                    continue
                analysis = root / "analysis" / corpus / f"seed{seed}" / ("relative" if extra else "absolute")
                if not (analysis / "trajectory_categories.json").exists():
                    subprocess.run([sys.executable, "-m", "recipe.analyze_trajectories", str(reference),
                                    "--out", str(analysis), *extra], check=True, capture_output=True)
                found = json.loads((analysis / "trajectory_categories.json").read_text())["shares"]
                for c in CATEGORIES:
                    shares[c].append(100 * found[c])
                if seed == seeds[0] and not extra:
                    for plot in analysis.glob("*.png"):
                        (out / f"trajectories_{corpus}_{plot.name}").write_bytes(plot.read_bytes())
            if shares[CATEGORIES[0]]:
                tables.setdefault(corpus, {})[mode] = shares
    return tables


def negative_overlaps(root: Path, corpora: list[str], seed: int, args) -> dict:
    """benchmarks/negative_overlap.py on each corpus's reference run of `seed`: which negatives PS picks."""
    found = {}
    for corpus in corpora:
        reference = root / corpus / f"seed{seed}" / "random" / "pretrain"
        if (reference / "study_done.json").exists() and any(reference.glob("trajectories/ref-*")):
            found[f"{corpus} (seed {seed})"] = analyse_overlaps(str(reference), str(root / "corpora" / corpus),
                                                       args.pretrain_epochs, args.batch_size, seed)
    return found


def plot(results: dict, arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(results)
    fig, axes = plt.subplots(len(corpora), 2, figsize=(12, 3.6 * len(corpora)), squeeze=False)
    for row, corpus in enumerate(corpora):
        for col, (metric, label) in enumerate((("bleu4", "test BLEU-4"), ("dev_v2t_r1", "dev R@1 video->text (%)"))):
            ax = axes[row][col]
            shown = [a for a in arms if any(metric in r for r in results[corpus].get(a, {}).values())]
            for x, arm in enumerate(shown):
                values = [r[metric] for r in results[corpus][arm].values() if metric in r]
                mean, std = mean_std(values)
                ax.bar(x, mean, yerr=0 if len(values) < 2 else std, capsize=4,
                       color="tab:red" if arm == "ps_log" else "tab:gray" if arm == "random" else "tab:blue")
                ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
            ax.set_xticks(range(len(shown)), shown, rotation=25, ha="right")
            ax.set_title(f"{corpus}: {label} (bars: mean ± std over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(root: Path, args, jobs: list, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    plots = results_dir / "quality"
    plots.mkdir(exist_ok=True)
    arms = [a for a in ARM_TITLES if a in args.arms]
    results = collect(root, args.corpora, args.seeds, arms)
    tables = trajectory_tables(root, args.corpora, args.seeds, plots)
    overlaps = negative_overlaps(root, args.corpora, args.seeds[0], args)
    if results:
        plot(results, arms, plots / "quality_bleu4_r1.png")

    study_args = [a for a in sys.argv[1:] if a != "--report"]  # the command that ran the study, not this report
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quality.py " + shlex.join(study_args)
    lines = [
        "# Quality study: Pair Selection vs random negatives (issue 8)", "",
        f"Generated by `benchmarks/quality_report.py` on {date.today()} ({platform.machine()}, "
        f"{_cpu_count()} CPU cores, shared; {_versions()}). Command (from the repository root):", "",
        f"```bash\n{command}\n```", "",
        "Setup. Two synthetic corpora from `sharded_data.synth --preset tiny` (60-word grammar), "
        f"{args.train} training videos each, {args.eval_samples} dev and {args.eval_samples} test videos: "
        "**csl** = every sentence signed by 2-6 signers; **phoenix** = one signer per sentence plus 2 greetings "
        f"signed 24 times each. Model: `tiny` preset, ZeRO-2, 1 CPU rank, batch {args.batch_size}, lr 1e-3. "
        f"Contrastive arms: {args.pretrain_epochs} pretraining epochs (contrastive + translation loss) then "
        f"{args.finetune_epochs} finetuning epochs; translation only: {args.pretrain_epochs + args.finetune_epochs} "
        f"finetuning epochs, the same number of optimizer steps. The random arm records trajectories every "
        f"{args.record_every} epochs and is the reference run of the PS arms of its seed (the PS arms' extra cost). "
        f"Test decoding: beam {args.num_beams}. Seeds {args.seeds} (model init, sampling, augmentation; the "
        "corpus is fixed).", "",
    ]
    for corpus in results:
        lines += [f"## {corpus}", "",
                  "| arm | seeds | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | chrF | dev R@1 v2t | dev R@1 t2v | "
                  "BLEU-4 vs random (per seed) | min per seed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in arms:
            rows = results[corpus].get(arm, {})
            if not rows:
                continue
            cells = [fmt([r[m] for r in rows.values() if m in r]) for m in (*METRICS, *RETRIEVAL)]
            diff = paired(results, corpus, arm, "bleu4") if arm != "random" else None
            versus = "" if diff is None else (f"{diff['mean']:+.1f} ({', '.join(f'{d:+.1f}' for d in diff['diffs'])})"
                                              + (" **beyond spread**" if diff["beyond_spread"] else ""))
            minutes = statistics.fmean(r["seconds"] for r in rows.values()) / 60
            lines.append(f"| {ARM_TITLES[arm]} | {len(rows)} | " + " | ".join(cells) + f" | {versus} | {minutes:.1f} |")
        lines.append("")
        for metric, name in (("bleu4", "test BLEU-4"), ("dev_v2t_r1", "dev R@1 v2t")):
            diff = paired(results, corpus, "ps_log", metric)
            if diff:
                lines.append(
                    f"- PS (log) − random, {name}: {diff['mean']:+.2f} (per seed {', '.join(f'{d:+.1f}' for d in diff['diffs'])}; "
                    f"larger seed std {diff['spread']:.2f}) → "
                    + ("**beyond the seed spread**" if diff["beyond_spread"] else "**not** beyond the seed spread"))
        lines.append("")

    if tables:
        lines += ["## Trajectory analysis of the reference runs (negative pairs, first vs last reference checkpoint)", "",
                  "Mean share over the seeds' reference runs (`python -m recipe.analyze_trajectories RUN [--relative]`).", "",
                  "| corpus | thresholds | high→low | stays high | low→high | stays low | other |",
                  "|---|---|---|---|---|---|---|"]
        for corpus, modes in tables.items():
            for mode, shares in modes.items():
                lines.append(f"| {corpus} | {mode} | " + " | ".join(fmt(shares[c]) + "%" for c in shares) + " |")
        lines += ["| paper (PHOENIX-2014T) | | 36% | 32% | 18% | | |", ""]

    if overlaps:
        lines += ["## Which negatives Pair Selection picks", "",
                  "Word overlap of the two sentences of a negative pair: word Jaccard / share of pairs at most one word "
                  "apart (`python benchmarks/negative_overlap.py REFERENCE_RUN CORPUS`). PS score = delta of the "
                  "reference run; in-batch pairs: the batches the samplers build at that epoch of a "
                  f"{args.pretrain_epochs}-epoch run with global batch {args.batch_size}, and the pairs the loss mask "
                  "keeps (keep fraction 0.5, log curriculum).", "", *markdown_overlaps(overlaps), ""]

    if results:
        lines += ["## Plots", "", "![BLEU-4 and R@1 per arm](quality/quality_bleu4_r1.png)", ""]
        lines += [f"![{p.stem}](quality/{p.name})" for p in sorted(plots.glob("trajectories_*.png"))] + [""]

    missing = [j.name for j in jobs if not j.done]
    lines += [f"Runs not finished when this report was written: {len(missing)} of {len(jobs)}"
              + (f" ({', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''})" if missing else "") + ".", ""]

    report = results_dir / "quality.md"
    discussion = ""
    if report.exists() and DISCUSSION_MARK in report.read_text():
        discussion = report.read_text().split(DISCUSSION_MARK, 1)[1]
    report.write_text("\n".join(lines) + f"\n{DISCUSSION_MARK}{discussion}")
    (results_dir / "quality.json").write_text(json.dumps(
        {"settings": {k: _portable(v) for k, v in vars(args).items()}, "results": results, "trajectories": tables,
         "negative_overlap": overlaps},
        indent=1, default=str))
    print(f"report: {report}")
    return report


def _portable(value):
    """Paths inside the repository as relative paths: the results file must not name this machine's checkout."""
    if isinstance(value, str) and Path(value).is_absolute():
        repo = Path(__file__).resolve().parents[1]
        return str(Path(value).resolve().relative_to(repo)) if Path(value).resolve().is_relative_to(repo) else value
    return value


def _versions() -> str:
    """The packages whose version changed results before (transformers 5.24 renamed the decoder cache)."""
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "deepspeed", "peft"))


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))
