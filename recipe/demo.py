"""The main job, end to end, on the embedded synthetic corpus (CPU, `make demo`).

    python -m recipe.demo --out runs/demo

corpus -> shards -> reference run (random negatives, trajectories every k epochs) -> SCL-SLT pretraining
(Pair Selection, log curriculum) -> translation finetuning -> dev/test BLEU and ROUGE-L -> trajectory
analysis plots -> Hugging Face export -> translation of one test video. Each stage is the same command a
user would type (printed before it runs), so the demo doubles as a worked example; a stage whose output
is complete is skipped when the demo is run again.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], log: Path) -> None:
    """Run one stage, its output to `log` (and its last lines to the terminal on failure)."""
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TQDM_MININTERVAL": "5"}
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if code != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="where every stage writes")
    parser.add_argument("--reference-epochs", type=int, default=4)
    parser.add_argument("--record-every", type=int, default=2, help="k: reference checkpoint every k epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=1000, help="synthetic training videos")
    parser.add_argument("--eval-samples", type=int, default=100, help="synthetic dev and test videos (each)")
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
              "--num-workers", "1", "--log-every", "10", "--eval-every", "0", "--save-every", "100"]
    started = time.perf_counter()

    if not (shards / "index-test.json").exists():
        run([python, "-m", "sharded_data.synth", "--out", str(shards), "--preset", "tiny", "--train", str(args.train),
             "--dev", str(args.eval_samples), "--test", str(args.eval_samples), "--no-progress"], logs / "synth.log")
    run([python, "-m", "recipe.pretrain", *common, "--out", str(reference), "--negatives", "random",
         "--epochs", str(args.reference_epochs), "--record-trajectory-every", str(args.record_every),
         "--lr", "1e-3", "--warmup-steps", "20"], logs / "reference.log")
    run([python, "-m", "recipe.pretrain", *common, "--out", str(scl), "--negatives", "ps", "--curriculum", "log",
         "--reference-run", str(reference), "--epochs", str(args.pretrain_epochs), "--lr", "1e-3",
         "--warmup-steps", "20"], logs / "scl_pretrain.log")
    run([python, "-m", "recipe.finetune", *common, "--out", str(finetune), "--init", str(scl),
         "--epochs", str(args.finetune_epochs), "--lr", "1e-3", "--warmup-steps", "20",
         "--num-beams", str(args.num_beams)], logs / "finetune.log")
    run([python, "-m", "recipe.analyze_trajectories", str(reference), "--out", str(analysis)], logs / "analysis.log")
    run([python, "-m", "recipe.convert_to_hf", str(finetune), "--out", str(hf)], logs / "export.log")
    video, reference_text = export_test_video(shards, out / "example_test_video.mp4")
    run([python, "-m", "recipe.translate", "--model", str(hf), str(video), "--out", str(out / "example.tsv"),
         "--num-beams", str(args.num_beams)], logs / "translate.log")

    test = json.loads((finetune / "reports" / "test.json").read_text())
    retrieval = [json.loads(line)["eval"] for line in (scl / "metrics.jsonl").read_text().splitlines()
                 if '"eval"' in line and "dev_v2t_r1" in line]
    untrained = untrained_test_bleu4(finetune, shards)
    categories = json.loads((analysis / "trajectory_categories.json").read_text())
    translation = (out / "example.tsv").read_text().split("\t", 1)[1].strip()
    summary = {
        "test_bleu4": round(test["bleu4"], 2), "test_bleu1": round(test["bleu1"], 2),
        "test_rouge_l": round(test["rouge_l"], 2), "test_chrf": round(test["chrf"], 2),
        "untrained_test_bleu4": round(untrained, 2),
        "dev_retrieval_r1_v2t": round(retrieval[-1]["dev_v2t_r1"], 1) if retrieval else None,
        "trajectory_categories": categories.get("shares", categories),
        "example": {"video": str(video), "reference": reference_text, "translation": translation},
        "plots": sorted(str(p) for p in analysis.glob("*.png")), "hf_model": str(hf),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print("\n== SCL-SLT demo summary ==")
    print(f"test BLEU-4 {summary['test_bleu4']}  BLEU-1 {summary['test_bleu1']}  ROUGE-L {summary['test_rouge_l']}  "
          f"chrF {summary['test_chrf']}   (the same network untrained: BLEU-4 {summary['untrained_test_bleu4']})")
    print(f"dev retrieval R@1 (video->text) after SCL pretraining: {summary['dev_retrieval_r1_v2t']}")
    print(f"report: {finetune / 'reports' / 'test.md'}")
    print(f"trajectory analysis: {analysis / 'trajectory_categories.md'} and {len(summary['plots'])} plots in {analysis}")
    print(f"Hugging Face model: {hf}")
    print(f"example: {video.name}\n  reference:   {reference_text}\n  translation: {translation}")
    print(f"total {summary['minutes']} min; summary in {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
