"""`make demo`'s driver, end to end at a toy size: every stage runs and the summary names real outputs.

The full-size demo (and its BLEU) is `make demo` itself; this only proves the chain cannot rot.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = ("reference", "scl", "finetune")


def _training_records(run: Path) -> list[dict]:
    """The run's training-step records (the lines with a loss) from RUN/metrics.jsonl."""
    return [record for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in record]


def _written(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its modification time (ns): what a stage that ran again would change."""
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_demo_runs_every_stage_and_is_idempotent(tmp_path):
    """The second run must train nothing: no training step logged again, the corpus and the reference
    trajectories untouched, the same checkpoints. (Equal BLEU alone would let a full, deterministic retrain
    pass.) Broken variant tried: demo.py deleting the three run directories before its stages (every run
    retrains from scratch, deterministically): the old check (equal BLEU) passed, this one fails."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "recipe.demo", "--out", str(out), "--train", "48", "--eval-samples", "8",
               "--reference-epochs", "3", "--record-every", "1", "--pretrain-epochs", "1", "--finetune-epochs", "1",
               "--batch-size", "8", "--num-beams", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_bleu4", "untrained_test_bleu4", "test_rouge_l", "dev_retrieval_r1_v2t"):
        assert isinstance(summary[key], float), key
    assert len(summary["plots"]) == 3 and all(Path(p).exists() for p in summary["plots"])
    assert (Path(summary["hf_model"]) / "model.safetensors").exists()
    assert summary["example"]["reference"]
    assert (out / "reference" / "trajectories").is_dir() and (out / "scl" / "checkpoints" / "latest").exists()
    assert "SCL-SLT demo summary" in result.stdout
    trained = {run: _training_records(out / run) for run in RUNS}
    assert all(trained.values()), {run: len(records) for run, records in trained.items()}
    latest = {run: (out / run / "checkpoints" / "latest").read_text() for run in RUNS}
    untouched = {name: _written(out / name) for name in ("shards", "reference/trajectories")}

    # A second run finds every stage complete and only re-evaluates.
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {run: _training_records(out / run) for run in RUNS} == trained, "a run trained again"
    assert {run: (out / run / "checkpoints" / "latest").read_text() for run in RUNS} == latest
    assert {name: _written(out / name) for name in untouched} == untouched, "the corpus or trajectories were rewritten"
    assert json.loads((out / "summary.json").read_text())["test_bleu4"] == summary["test_bleu4"]
