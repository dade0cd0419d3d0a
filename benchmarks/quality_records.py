"""The quality study's run records: what each finished run contributes to the report, kept in the repository.

A study run leaves a run directory under `--out` (checkpoints, trajectories, logs: hundreds of MB, not kept),
while the report needs little of it: a finetuning run's test scores and hypotheses (the paired bootstrap
resamples test sentences), a pretraining run's wall time, optimizer steps and dev retrieval, a reference run's
trajectory categories. `archive_pretrain` / `archive_finetune` copy that into one small JSON file per run under
`benchmarks/results/quality_runs/CORPUS/seedN/ARM/STAGE.json`, committed with the report, so that the report
can be rebuilt and the study extended with more seeds after the run directories are gone. (They were gone once:
a fresh checkout kept quality.md but not the 280 runs behind it, and no further seed could be paired with them.)

Runs are deterministic for a fixed corpus and seed, so a run started again (because a job still to run needs its
run directory) must reproduce its record: `archive_*` compares, counts the reproduction in the record, and when
a deterministic field differs keeps the first record, writes the new one next to it as `STAGE.rerun.json` and
says so. The report counts both.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from quality_stats import METRICS, read_hypotheses

RETRIEVAL = ("dev_v2t_r1", "dev_t2v_r1")
DETERMINISTIC = {"pretrain": ("steps", *RETRIEVAL, "final_loss"), "finetune": ("steps", "test", "hypotheses")}
"""Fields a rerun of the same run must reproduce exactly (wall time need not)."""


def record_path(records: Path, corpus: str, seed: int, arm: str, stage: str) -> Path:
    return records / corpus / f"seed{seed}" / arm / f"{stage}.json"


def references_path(records: Path, corpus: str) -> Path:
    return records / corpus / "test_references.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


# --- what a run directory holds ---------------------------------------------------------------------------
def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _steps_and_last_loss(run: Path) -> tuple[int, float | None]:
    losses = [r for r in _metrics(run) if "loss" in r]
    last = max(losses, key=lambda r: r["step"], default=None)
    return (last["step"], last["loss"]) if last else (0, None)


def _seconds(run: Path) -> float:
    return json.loads((run / "study_done.json").read_text())["seconds"]


def versions() -> dict[str, str]:
    """The packages whose version changed results before (transformers 5.24 renamed the decoder cache)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "deepspeed", "peft", "sacrebleu")}


# --- archiving --------------------------------------------------------------------------------------------
def archive_pretrain(run: Path, record: Path, corpus_data: Path, analysis: Path | None = None,
                     twins_batch: int = 0) -> str:
    """Record a finished pretraining run. `analysis`: where `recipe.analyze_trajectories` writes this
    reference run's categories (a reference run only); `twins_batch` > 0: also the twins-per-batch rows at that
    batch size (`benchmarks/bench_sampler.py`'s measurement; one reference run per corpus is enough)."""
    steps, loss = _steps_and_last_loss(run)
    evaluations = [r["eval"] for r in _metrics(run) if "eval" in r]
    found = {"seconds": _seconds(run), "steps": steps, "final_loss": loss,
             **{k: evaluations[-1][k] for k in RETRIEVAL if evaluations and k in evaluations[-1]}}
    if analysis is not None and any(run.glob("trajectories/ref-*")):
        summary = analysis / "trajectory_categories.json"
        if not summary.exists():
            subprocess.run([sys.executable, "-m", "recipe.analyze_trajectories", str(run), "--out", str(analysis),
                            "--relative", "--data", str(corpus_data)], check=True, capture_output=True)
        categories = load(summary)
        # The record is committed: name the checkpoints relative to the run, not by this machine's paths.
        categories["run_checkpoints"] = [os.path.relpath(c, run) for c in categories.get("run_checkpoints", [])]
        found["trajectory_categories"] = categories
        if twins_batch:
            found["twins"] = _twin_rows(run, twins_batch)
    return _write(record, "pretrain", found)


def archive_finetune(run: Path, record: Path, references: Path) -> str:
    """Record a finished finetuning run: test scores, hypotheses in sample-id order (the references once per
    corpus, in `references`, checked against every later run's)."""
    rows = read_hypotheses(run / "reports" / "test.hyp.tsv")
    ids = sorted(rows)
    test = load(run / "reports" / "test.json")
    corpus_references = {"sample_ids": ids, "references": [rows[i][1] for i in ids]}
    if not references.exists():
        references.parent.mkdir(parents=True, exist_ok=True)
        references.write_text(json.dumps(corpus_references, ensure_ascii=False, indent=0))
    elif load(references) != corpus_references:
        raise ValueError(f"{run}: its test references differ from {references}: was the corpus regenerated with "
                         f"other settings? Archive it under another --records directory")
    steps, _ = _steps_and_last_loss(run)
    found = {"seconds": _seconds(run), "steps": steps, "test": {k: test[k] for k in METRICS},
             "hypotheses": [rows[i][0] for i in ids]}
    return _write(record, "finetune", found)


def cpu_model() -> str:
    """The processor: runs are bit-identical across processes on one machine, not across CPU models (a csl-like
    seed 0 CL-SLT run gave test BLEU-4 44.30 on the machine of the first sittings and 45.49 on the next one)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _write(record: Path, stage: str, found: dict) -> str:
    """Write a new record, or compare with the existing one: 'new', 'reproduced' or 'differs'."""
    found["versions"], found["cpu"] = versions(), cpu_model()
    if not record.exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(record, found)
        return "new"
    first = load(record)
    if all(first.get(k) == found.get(k) for k in DETERMINISTIC[stage]):
        first["reproduced"] = first.get("reproduced", 0) + 1
        _atomic_write(record, first)
        return "reproduced"
    _atomic_write(record.with_suffix(".rerun.json"), found)
    differing = [k for k in DETERMINISTIC[stage] if first.get(k) != found.get(k)]
    print(f"[DIFF ] {record}: a rerun differs in {', '.join(differing)}; the first record is kept, the rerun is "
          f"{record.with_suffix('.rerun.json').name}", flush=True)
    return "differs"


def _atomic_write(path: Path, content: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(content, ensure_ascii=False, indent=1))
    partial.replace(path)


def _twin_rows(reference: Path, batch: int) -> list[str]:
    from bench_sampler import twin_rows

    from recipe.pair_selection import PairScorer
    from recipe.trajectory_store import load_trajectory

    trajectory = load_trajectory(reference, load_tokens=False)
    shared = PairScorer(trajectory, "delta", "token").symmetric_scores()
    name = f"{reference.parents[2].name} {reference.parents[1].name.replace('seed', 'seed ')}"
    return twin_rows(name, lambda mode: PairScorer(trajectory, "delta", "token", same_sentence=mode,
                                                   symmetric_scores=shared), trajectory, batch=batch)
