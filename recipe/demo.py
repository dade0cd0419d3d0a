"""The main job, end to end, on the built-in synthetic corpus (CPU, `make demo`).

    python -m recipe.demo --out runs/demo [--seed S]

corpus -> shards -> reference run (random negatives, trajectories every k epochs) -> SCL-SLT pretraining
(Pair Selection, the default curriculum) -> translation finetuning -> dev/test BLEU and ROUGE-L ->
trajectory analysis (categories per ground-truth pair kind) -> Hugging Face export -> translation of one
test video. Each stage is the same command a user would type (printed before it runs, its output shown as
it comes and kept in RUN/logs), so the demo doubles as a worked example; a stage whose output is complete
is skipped when the demo is run again. The corpus is fixed (seed 0); `--seed` changes the training runs'
seeds (initialisation, batches, augmentation).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES_SHOWN = 5


def run(command: list[str], log: Path) -> None:
    """Run one stage: its output goes to the terminal as it comes (progress bars included) and to `log`."""
    print("\n$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TQDM_MININTERVAL": "5",
           "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            out.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        code = process.wait()
    if code != 0:
        raise SystemExit(f"stage failed with exit code {code}; full log: {log}")
    print(f"  done in {time.perf_counter() - started:.0f} s (log: {log})", flush=True)


def export_test_video(shards: Path, out: Path) -> tuple[Path, str]:
    """Write test sample 0 as an mp4 a user could have recorded, and return it with its reference."""
    import numpy as np

    from sharded_data.format import encode_video, load_index
    from sharded_data.reader import IndexedShardReader, decode_raw_sample

    index = load_index(shards, "test")
    decoded = decode_raw_sample(IndexedShardReader(shards, "test", index).read_raw(0))
    _, data = encode_video(np.asarray(decoded.frames), "mp4", fps=decoded.meta.fps)
    out.write_bytes(data)
    return out, decoded.text


def untrained_test_bleu4(run: Path, shards: Path) -> float:
    """BLEU-4 on test of the finetuned run's network with fresh random weights: the floor to compare with."""
    import torch

    from recipe.evaluate import score_rows, translate_split
    from recipe.modeling import SignTranslationConfig, SignTranslationModel
    from recipe.tokenizer import load_tokenizer
    from sharded_data.reader import ReaderConfig

    torch.manual_seed(0)
    model = SignTranslationModel(SignTranslationConfig.from_pretrained(run / "model_config"))
    reader = ReaderConfig(frame_size=model.config.frame_size, max_frames=64, num_workers=0)
    rows = translate_split(model, load_tokenizer(run / "tokenizer"), str(shards), "test", 50, reader,
                           num_beams=1, max_new_tokens=30)
    return score_rows(rows).bleu4


def test_examples(finetune: Path, shards: Path, count: int = EXAMPLES_SHOWN) -> list[dict]:
    """A few test translations, evenly spread over the split: what was signed, the reference, the model's output."""
    with open(finetune / "reports" / "test.hyp.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    corpus = json.loads((shards / "corpus.json").read_text(encoding="utf-8"))
    glosses = ((corpus.get("generator") or {}).get("ground_truth") or {}).get("test", {}).get("gloss")
    picked = [rows[round(i * (len(rows) - 1) / max(count - 1, 1))] for i in range(min(count, len(rows)))]
    return [dict(sample_id=int(row["sample_id"]), signed=glosses[int(row["sample_id"])] if glosses else None,
                 reference=row["reference"], hypothesis=row["hypothesis"]) for row in picked]


def dev_curve(finetune: Path) -> list[tuple[int, float]]:
    """(step, dev BLEU-4) of every evaluation during finetuning: whether the run had converged."""
    curve = []
    for line in (finetune / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval" in record and "dev_bleu4" in record["eval"]:
            curve.append((record["step"], round(record["eval"]["dev_bleu4"], 1)))
    return list(dict(curve).items())  # a resumed run may repeat a step: keep its last value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="where every stage writes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training runs (the corpus stays the same)")
    parser.add_argument("--corpus", default="csl-like", help="synthetic corpus preset (python -m sharded_data.synth --help)")
    parser.add_argument("--reference-epochs", type=int, default=6)
    parser.add_argument("--record-every", type=int, default=2, help="k: reference checkpoint every k epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=16)
    parser.add_argument("--train", type=int, default=1200, help="synthetic training videos")
    parser.add_argument("--eval-samples", type=int, default=200, help="synthetic dev and test videos (each)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=4)
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    shards, reference, scl, finetune = out / "shards", out / "reference", out / "scl", out / "finetune"
    analysis, hf = out / "analysis", out / "hf_model"
    common = ["--data", str(shards), "--deepspeed_config", "ds_configs/zero2.json", "--preset", "tiny",
              "--frame-size", "32", "--max-frames", "64", "--micro-batch-size", str(args.batch_size),
              "--num-workers", "1", "--log-every", "10", "--save-every", "200", "--lr", "1e-3", "--warmup-steps", "20",
              "--seed", str(args.seed)]
    steps_per_epoch = max(1, args.train // args.batch_size)
    started = time.perf_counter()

    if not (shards / "index-test.json").exists():
        run([python, "-m", "sharded_data.synth", "--out", str(shards), "--preset", args.corpus, "--train", str(args.train),
             "--dev", str(args.eval_samples), "--test", str(args.eval_samples)], logs / "synth.log")
    run([python, "-m", "recipe.pretrain", *common, "--out", str(reference), "--negatives", "random",
         "--epochs", str(args.reference_epochs), "--record-trajectory-every", str(args.record_every),
         "--eval-every", "0"], logs / "reference.log")
    run([python, "-m", "recipe.pretrain", *common, "--out", str(scl), "--negatives", "ps",
         "--reference-run", str(reference), "--epochs", str(args.pretrain_epochs), "--eval-every", "0"],
        logs / "scl_pretrain.log")
    # Dev BLEU every two epochs shows on the console (and in the summary) that the finetuning has converged.
    run([python, "-m", "recipe.finetune", *common, "--out", str(finetune), "--init", str(scl),
         "--epochs", str(args.finetune_epochs), "--eval-every", str(2 * steps_per_epoch),
         "--num-beams", str(args.num_beams)], logs / "finetune.log")
    run([python, "-m", "recipe.analyze_trajectories", str(reference), "--out", str(analysis), "--data", str(shards)],
        logs / "analysis.log")
    run([python, "-m", "recipe.convert_to_hf", str(finetune), "--out", str(hf)], logs / "export.log")
    video, reference_text = export_test_video(shards, out / "example_test_video.mp4")
    run([python, "-m", "recipe.translate", "--model", str(hf), str(video), "--out", str(out / "example.tsv"),
         "--num-beams", str(args.num_beams)], logs / "translate.log")

    print("\n[scoring the untrained network for comparison]", flush=True)
    test = json.loads((finetune / "reports" / "test.json").read_text())
    retrieval = [json.loads(line)["eval"] for line in (scl / "metrics.jsonl").read_text().splitlines()
                 if '"eval"' in line and "dev_v2t_r1" in line]
    untrained = untrained_test_bleu4(finetune, shards)
    categories = json.loads((analysis / "trajectory_categories.json").read_text())
    translation = (out / "example.tsv").read_text().split("\t", 1)[1].strip()
    summary = {
        "seed": args.seed,
        "test_bleu4": round(test["bleu4"], 2), "test_bleu1": round(test["bleu1"], 2),
        "test_rouge_l": round(test["rouge_l"], 2), "test_chrf": round(test["chrf"], 2),
        "untrained_test_bleu4": round(untrained, 2),
        "dev_bleu4_curve": dev_curve(finetune),
        "dev_retrieval_r1_v2t": round(retrieval[-1]["dev_v2t_r1"], 1) if retrieval else None,
        "reference_checkpoints": categories.get("reference_epochs"),
        "trajectory_categories": categories.get("shares", categories),
        "test_examples": test_examples(finetune, shards),
        "example": {"video": str(video), "reference": reference_text, "translation": translation},
        "plots": sorted(str(p) for p in analysis.glob("*.png")), "hf_model": str(hf),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print("\n== SCL-SLT demo summary ==")
    print(f"test BLEU-4 {summary['test_bleu4']}  BLEU-1 {summary['test_bleu1']}  ROUGE-L {summary['test_rouge_l']}  "
          f"chrF {summary['test_chrf']}   (the same network untrained: BLEU-4 {summary['untrained_test_bleu4']})")
    print("dev BLEU-4 during finetuning (step: BLEU-4): "
          + ", ".join(f"{step}: {bleu}" for step, bleu in summary["dev_bleu4_curve"]))
    print(f"dev retrieval R@1 (video->text) after SCL pretraining: {summary['dev_retrieval_r1_v2t']}")
    print(f"report: {finetune / 'reports' / 'test.md'}")
    print(f"trajectory analysis ({len(summary['reference_checkpoints'] or [])} reference checkpoints): "
          f"{analysis / 'trajectory_categories.md'} and {len(summary['plots'])} plots in {analysis}")
    print(f"Hugging Face model: {hf}")
    print("test examples (the signs in the video; the reference translation; the model's translation):")
    for example in summary["test_examples"]:
        print(f"  [{example['sample_id']}] signed:     {example['signed'] or '(no glosses)'}\n"
              f"       reference:  {example['reference']}\n       translated: {example['hypothesis']}")
    print(f"exported model on {video.name}:\n  reference:   {reference_text}\n  translation: {translation}")
    print(f"total {summary['minutes']} min; summary in {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
