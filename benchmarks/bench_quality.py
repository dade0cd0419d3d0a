"""Does Pair Selection help? The quality study: arms x corpora x seeds, run as the CLI a user would type.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quality.py --out runs/quality --workers 2

Two synthetic corpora with the same vocabulary (the `tiny` grammar) and the same number of training videos:
  csl      every sentence signed by 2-6 signers (same-text pairs everywhere, as in CSL-Daily);
  phoenix  one signer per sentence, plus 2 greetings signed 24 times each (as in PHOENIX-2014T).
Arms, each trained with every seed (the seed sets model init, sampling and augmentation; the corpus is fixed):
  translation_only  no pretraining; finetuning for pretrain + finetune epochs (the same optimizer steps)
  random            contrastive pretraining with random in-batch negatives (GFSLT-VLP), then finetuning.
                    This run also records the similarity trajectories: it is the reference run of the PS arms
  ps_log            SCL-SLT: Pair Selection (delta score) with the log curriculum, then finetuning
  ps_last           ablation: score from the last reference checkpoint only (no trajectory)
  ps_no_mask        ablation: same-sentence masking off (another signer's video of the sentence is a negative)
  ps_easy, ps_hard  ablation: easy-only / hard-only curricula
  ps_batches_only   ablation: curriculum batches, but the mask keeps every negative (--ps-keep-fraction 1.0),
                    which separates what the batch construction does from what dropping negatives does
  random_contrastive, ps_log_contrastive
                    random and ps_log with a purely contrastive pretraining (--translation-weight 0, as in
                    GFSLT-VLP's stage 1): separates what PS batches do to the contrastive objective from what
                    they do to the translation loss trained on the same batches
Every contrastive arm pretrains for the same epochs and finetunes for the same epochs; the PS arms also need
the reference run (the random arm of the same seed), a cost the table states rather than hides.

Resumable: a finished run leaves `study_done.json`; an interrupted one resumes from its checkpoint. `--report`
only aggregates what exists into benchmarks/results/quality.md (+ quality.json and plots).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))  # run as a script from the repository root: `recipe` must be importable

CORPORA = {
    "csl": ["--signers-per-sentence", "2", "6"],
    "phoenix": ["--signers-per-sentence", "1", "1", "--repeat-sentences", "2", "24"],
}
PS_ARMS = {
    "ps_log": ["--curriculum", "log"],
    "ps_last": ["--curriculum", "log", "--ps-score", "last"],
    "ps_no_mask": ["--curriculum", "log", "--same-sentence", "negative"],
    "ps_easy": ["--curriculum", "easy"],
    "ps_hard": ["--curriculum", "hard"],
    "ps_batches_only": ["--curriculum", "log", "--ps-keep-fraction", "1.0"],
    "ps_log_contrastive": ["--curriculum", "log", "--translation-weight", "0"],
}
RANDOM_ARMS = {"random_contrastive": ["--translation-weight", "0"]}  # besides `random`, the reference run
MAIN_ARMS = ("translation_only", "random", "ps_log")
ARMS = (*MAIN_ARMS, *[a for a in PS_ARMS if a not in MAIN_ARMS], *RANDOM_ARMS)


@dataclass
class Job:
    name: str
    """corpus/seed/arm/stage"""
    out: Path
    command: list[str]
    needs: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.out / "study_done.json").exists()

    @property
    def arm(self) -> str:
        return self.name.split("/")[2]


def corpus_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    root = Path(args.out).resolve()
    return {
        name: [sys.executable, "-m", "sharded_data.synth", "--out", str(root / "corpora" / name), "--preset", "tiny",
               "--train", str(args.train), "--dev", str(args.eval_samples), "--test", str(args.eval_samples),
               "--no-progress", *extra]
        for name, extra in CORPORA.items() if name in args.corpora
    }


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """Every run of the study in the order to start them: the main arms of every (seed, corpus) first, so
    that a study cut short still answers the main question, then the ablations."""
    python, root = sys.executable, Path(args.out).resolve()
    jobs: list[Job] = []
    for seed in args.seeds:
        for corpus in args.corpora:
            common = ["--data", str(root / "corpora" / corpus), "--deepspeed_config", "ds_configs/zero2.json",
                      "--preset", "tiny", "--frame-size", "32", "--max-frames", "64",
                      "--micro-batch-size", str(args.batch_size), "--num-workers", "1", "--log-every", "10",
                      "--eval-every", "0", "--save-every", "1000", "--lr", "1e-3", "--warmup-steps", "20",
                      "--seed", str(seed)]
            runs = root / corpus / f"seed{seed}"
            reference = f"{corpus}/{seed}/random/pretrain"
            for arm in ARMS:
                pretrained = runs / arm / "pretrain"
                if arm == "random":
                    jobs.append(Job(reference, pretrained, [
                        python, "-m", "recipe.pretrain", *common, "--out", str(pretrained), "--epochs",
                        str(args.pretrain_epochs), "--negatives", "random",
                        "--record-trajectory-every", str(args.record_every)]))
                elif arm in RANDOM_ARMS:
                    jobs.append(Job(f"{corpus}/{seed}/{arm}/pretrain", pretrained, [
                        python, "-m", "recipe.pretrain", *common, "--out", str(pretrained), "--epochs",
                        str(args.pretrain_epochs), "--negatives", "random", *RANDOM_ARMS[arm]]))
                elif arm in PS_ARMS:
                    jobs.append(Job(f"{corpus}/{seed}/{arm}/pretrain", pretrained, [
                        python, "-m", "recipe.pretrain", *common, "--out", str(pretrained), "--epochs",
                        str(args.pretrain_epochs), "--negatives", "ps", "--reference-run",
                        str(runs / "random" / "pretrain"), *PS_ARMS[arm]], [reference]))
                finetuned = runs / arm / "finetune"
                init = [] if arm == "translation_only" else ["--init", str(pretrained)]
                epochs = args.finetune_epochs + (args.pretrain_epochs if arm == "translation_only" else 0)
                jobs.append(Job(f"{corpus}/{seed}/{arm}/finetune", finetuned, [
                    python, "-m", "recipe.finetune", *common, "--out", str(finetuned), "--epochs", str(epochs),
                    "--num-beams", str(args.num_beams), *init],
                    [f"{corpus}/{seed}/{arm}/pretrain"] if init else []))
    wanted = {j.name for j in jobs if j.arm in args.arms}
    wanted |= {need for j in jobs if j.name in wanted for need in j.needs}  # an ablation needs its reference run
    return sorted((j for j in jobs if j.name in wanted), key=lambda j: j.arm not in MAIN_ARMS)  # stable sort


def run_jobs(jobs: list[Job], workers: int, log_dir: Path) -> None:
    """Run the jobs on `workers` threads, each job a subprocess; a job starts once the jobs it needs are done,
    and is dropped when one of them failed."""
    lock = threading.Lock()
    pending = [j for j in jobs if not j.done]
    finished, failed = {j.name for j in jobs if j.done}, set()

    def take() -> Job | None | bool:
        """The next runnable job, None if all left wait on a running one, False if nothing is left."""
        with lock:
            for job in list(pending):
                if any(n in failed for n in job.needs):
                    pending.remove(job)
                    failed.add(job.name)
                    print(f"[skip ] {job.name}: a run it needs failed", flush=True)
                elif all(n in finished for n in job.needs):
                    pending.remove(job)
                    return job
            return None if pending else False

    def work() -> None:
        while (job := take()) is not False:
            if job is None:
                time.sleep(2)
                continue
            log = log_dir / (job.name.replace("/", "_") + ".log")
            print(f"[start] {job.name}: {shlex.join(job.command)}", flush=True)
            started = time.perf_counter()
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "30"}
            with open(log, "a") as out:
                code = subprocess.call(job.command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
            seconds = time.perf_counter() - started
            with lock:
                if code == 0:
                    record = {"seconds": round(seconds, 1), "command": job.command}
                    (job.out / "study_done.json").write_text(json.dumps(record))
                    finished.add(job.name)
                    print(f"[done ] {job.name} in {seconds:.0f} s", flush=True)
                else:
                    failed.add(job.name)
                    print(f"[FAIL ] {job.name} (exit {code}); log: {log}", flush=True)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quality", help="where corpora and runs go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--train", type=int, default=320, help="training videos per corpus")
    parser.add_argument("--eval-samples", type=int, default=80, help="dev and test videos per corpus (each)")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--record-every", type=int, default=2, help="reference checkpoint every k epochs")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="runs at once (each uses one thread)")
    parser.add_argument("--report", action="store_true", help="only aggregate the finished runs")
    parser.add_argument("--results", default=str(RESULTS), help="where quality.md, quality.json and plots go")
    args = parser.parse_args(argv)

    root = Path(args.out).resolve()
    jobs = plan_jobs(args)
    if not args.report:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        for name, command in corpus_commands(args).items():
            if not (root / "corpora" / name / "index-test.json").exists():
                print(f"[corpus] {shlex.join(command)}", flush=True)
                subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
        run_jobs(jobs, args.workers, root / "logs")
    from quality_report import write_report  # the aggregation: benchmarks/quality_report.py

    write_report(root, args, jobs, Path(args.results))


if __name__ == "__main__":
    main()
