"""Does Pair Selection help? The paper's tables at CPU scale: arms x corpora x seeds, run as the CLI a user types.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quality.py --out runs/quality --workers 2   # resumable
        # --seeds 0 ... 9 --seeds-for csl-like=20 --seeds-for phoenix-like=30 (the study): more seeds where the
        # paired differences spread more
    .venv/bin/python benchmarks/bench_quality.py --out runs/quality --report     # only aggregate what finished
    .venv/bin/python benchmarks/bench_quality.py --out runs/quality --repro-check
        # rerun the smallest configuration (one random-negative arm, seed 0) in fresh processes: same numbers?

Corpora: `python -m sharded_data.synth --preset P --video-format npy` (corpus seed 0, fixed; the seed of a run
sets the model's initialisation, its batches and augmentation), presets matched to the real corpora's pair
statistics:
  csl-like, phoenix-like   the main comparison, every main arm
  dense-neighbours         the mechanism test: hidden twins and one-sign-apart pairs in most batches, the
                           regime where Pair Selection's false-negative story should matter most

Arms (ARMS below), each a plain set of flags of `recipe.pretrain` followed by `recipe.finetune`:
  translation_only  no pretraining: finetuning for the pretraining + finetuning epochs (the same optimizer steps)
  cl                the paper's CL-SLT: random in-batch negatives, plain InfoNCE (--same-sentence negative);
                    records its trajectory every epoch: it is the reference run of the SCL arms of its seed
  cl_masked         ours: random negatives, same-sentence pairs masked (--same-sentence mask, the recipe's default)
  scl               SCL-SLT as the paper describes it: Pair Selection batches from cl's trajectory, delta score,
                    log curriculum, token-level scores, no in-loss mask, twins unmasked (--same-sentence negative)
  scl_masked        SCL-SLT with same-sentence masking, from cl_masked's trajectory
  scl_self          SCL-SLT with --reference-run self: one run records its own trajectory (K = 3 checkpoints,
                    one per epoch) with random negatives, then Pair Selection
  scl_iid           our extension: the contrastive loss on Pair Selection batches, the joint translation loss on
                    i.i.d. batches (--translation-batches iid)
Ablations (the paper's other tables; fewer seeds, one corpus), each scl with one change:
  scl_easy, scl_hard, scl_linear, scl_sqrt   the curriculum (scl itself is log)
  scl_from2, scl_from3   the trajectory interval: the reference trajectory starts after epoch 2 or 3 instead of 1
                         (a longer recording interval moves the paper's first reference point later; delta only
                         reads the first and the last point)
  scl_cls, scl_mean      the PS score's aggregation (--ps-similarity; scl is token-level)
  scl_last               the last reference checkpoint only, no trajectory (--ps-score last)

Order: the runs of the main comparison first (cl, cl_masked, scl on both main corpora, seed by seed), then the
other main arms, the mechanism test, the ablations, and extra seeds: a study cut short still answers the main
question. A finished run leaves `study_done.json`; an interrupted one resumes from its checkpoint.

Records: each finished run also leaves a small record in benchmarks/results/quality_runs/ (`quality_records.py`),
which the report reads and which is committed with it: the run directories may be gone (a fresh checkout) and the
study can still be reported and extended. The first four sittings predate records: their scores survive in
benchmarks/results/quality_legacy.json (`--legacy`), their seeds are not run again, and later seeds pool with
them (`quality_stats.pooled_difference`).

`quality_report.py` aggregates into benchmarks/results/quality.md (+ quality.json and plots).
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
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))  # run as a script from the repository root: `recipe` must be importable

from quality_records import archive_finetune, archive_pretrain, record_path, references_path  # noqa: E402

MAIN_CORPORA = ("csl-like", "phoenix-like")
MECHANISM_CORPUS = "dense-neighbours"
CORPORA = (*MAIN_CORPORA, MECHANISM_CORPUS)


@dataclass(frozen=True)
class Arm:
    title: str
    pretrain: tuple[str, ...] | None
    """`recipe.pretrain` flags; None = no pretraining (translation only)."""
    reference: str = ""
    """The arm whose pretraining run is this arm's reference run (two-run Pair Selection)."""
    trajectory_from: int = 1
    """The reference trajectory's first epoch (a view of the reference run's checkpoints from that epoch on)."""
    records: bool = False
    """This arm's pretraining records a reference checkpoint after every epoch."""


PAPER_SCL = ("--negatives", "ps", "--same-sentence", "negative")  # every other PS setting: the recipe's defaults
ARMS: dict[str, Arm] = {
    "translation_only": Arm("translation only (same optimizer steps)", None),
    "cl": Arm("CL-SLT: random negatives, plain InfoNCE (the paper's baseline)",
              ("--negatives", "random", "--same-sentence", "negative"), records=True),
    "cl_masked": Arm("CL, random negatives, same-sentence pairs masked (ours)",
                     ("--negatives", "random", "--same-sentence", "mask"), records=True),
    "scl": Arm("**SCL-SLT as the paper describes it**", PAPER_SCL, reference="cl"),
    "scl_masked": Arm("SCL-SLT + same-sentence masking", ("--negatives", "ps", "--same-sentence", "mask"),
                      reference="cl_masked"),
    "scl_self": Arm("SCL-SLT, --reference-run self (one run)",
                    (*PAPER_SCL, "--reference-run", "self", "--record-trajectory-every", "1",
                     "--self-reference-checkpoints", "3")),
    "scl_iid": Arm("SCL-SLT, translation loss on i.i.d. batches (ours)", (*PAPER_SCL, "--translation-batches", "iid"),
                   reference="cl"),
    "scl_easy": Arm("curriculum: easy only", (*PAPER_SCL, "--curriculum", "easy"), reference="cl"),
    "scl_hard": Arm("curriculum: hard only", (*PAPER_SCL, "--curriculum", "hard"), reference="cl"),
    "scl_linear": Arm("curriculum: linear", (*PAPER_SCL, "--curriculum", "linear"), reference="cl"),
    "scl_sqrt": Arm("curriculum: sqrt", (*PAPER_SCL, "--curriculum", "sqrt"), reference="cl"),
    "scl_from2": Arm("trajectory from epoch 2", PAPER_SCL, reference="cl", trajectory_from=2),
    "scl_from3": Arm("trajectory from epoch 3", PAPER_SCL, reference="cl", trajectory_from=3),
    "scl_cls": Arm("PS score on CLS similarity", (*PAPER_SCL, "--ps-similarity", "cls"), reference="cl"),
    "scl_mean": Arm("PS score on mean-pooled similarity", (*PAPER_SCL, "--ps-similarity", "mean"), reference="cl"),
    "scl_last": Arm("PS score: last reference checkpoint only", (*PAPER_SCL, "--ps-score", "last"), reference="cl"),
}
CORE_ARMS = ("cl", "cl_masked", "scl")  # the two comparisons whose intervals the study must narrow
MAIN_ARMS = (*CORE_ARMS, "translation_only", "scl_masked", "scl_self", "scl_iid")
MECHANISM_ARMS = ("cl", "scl")
ABLATION_ARMS = ("scl_easy", "scl_hard", "scl_linear", "scl_sqrt", "scl_from2", "scl_from3", "scl_cls", "scl_mean",
                 "scl_last")


@dataclass
class Job:
    name: str
    """corpus/seed/arm/stage"""
    out: Path
    command: list[str]
    needs: list[str] = field(default_factory=list)
    tier: int = 0
    """Start order: lower first (main comparison, other main arms, mechanism, ablations, extra seeds)."""
    reference_view: tuple[Path, Path, int] | None = None
    """(reference run, view directory, first epoch): a reference trajectory starting later, made before the run."""
    record: Path | None = None
    """Where the run's record is kept once it finished (`quality_records.py`)."""
    legacy: str = ""
    """'kept': an earlier sitting ran it and only its scores survive (`--legacy`); 'lost': its seed is such a
    seed but this arm never ran then (it cannot be paired with that seed's other runs any more); '' otherwise."""

    @property
    def done(self) -> bool:
        """Its run directory holds the finished run."""
        return (self.out / "study_done.json").exists()

    @property
    def archived(self) -> bool:
        """Its record exists or an earlier sitting's scores stand for it (the run directory may be gone)."""
        return self.legacy == "kept" or (self.record is not None and self.record.exists())

    @property
    def corpus(self) -> str:
        return self.name.split("/")[0]

    @property
    def seed(self) -> int:
        return int(self.name.split("/")[1])

    @property
    def arm(self) -> str:
        return self.name.split("/")[2]

    @property
    def stage(self) -> str:
        return self.name.split("/")[3]


def corpus_dir(args: argparse.Namespace, corpus: str) -> Path:
    return Path(args.out).resolve() / "corpora" / corpus


def corpus_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    sizes = []
    for flag, value in (("--train", args.train), ("--dev", args.dev), ("--test", args.test)):
        sizes += [flag, str(value)] if value else []
    return {corpus: [sys.executable, "-m", "sharded_data.synth", "--out", str(corpus_dir(args, corpus)), "--preset",
                     corpus, "--seed", "0", "--video-format", args.video_format, *sizes, "--no-progress"]
            for corpus in args.corpora}


def seeds_of(args: argparse.Namespace, corpus: str) -> list[int]:
    return args.seeds_for.get(corpus, args.seeds)


def run_dir(args: argparse.Namespace, corpus: str, seed: int, arm: str) -> Path:
    return Path(args.out).resolve() / corpus / f"seed{seed}" / arm


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """Every run of the study, in the order to start them (see the module docstring)."""
    python = sys.executable
    jobs: list[Job] = []
    legacy = legacy_runs(args)

    def add(corpus: str, seed: int, arm_name: str, tier: int) -> None:
        arm = ARMS[arm_name]
        common = ["--data", str(corpus_dir(args, corpus)), "--deepspeed_config", "ds_configs/zero2.json",
                  "--preset", "tiny", "--frame-size", str(args.frame_size), "--max-frames", str(args.max_frames),
                  "--micro-batch-size", str(args.batch_size), "--num-workers", "0", "--log-every", "25",
                  "--eval-every", "0", "--save-every", "500", "--lr", str(args.lr), "--warmup-steps", "50",
                  "--seed", str(seed)]
        runs = run_dir(args, corpus, seed, arm_name)
        prefix = f"{corpus}/{seed}/{arm_name}"
        records = Path(args.records).resolve()
        earlier = ("kept" if seed in legacy.get(corpus, {}).get(arm_name, ()) else
                   "lost" if any(seed in seeds for seeds in legacy.get(corpus, {}).values()) else "")
        needs_pretrain = []
        if arm.pretrain is not None:
            flags = list(arm.pretrain)
            needs, view = [], None
            if arm.records:
                flags += ["--record-trajectory-every", "1"]
            if arm.reference:
                reference = run_dir(args, corpus, seed, arm.reference) / "pretrain"
                if arm.trajectory_from > 1:
                    view = (reference, runs / "reference_view", arm.trajectory_from)
                    reference = runs / "reference_view"
                flags += ["--reference-run", str(reference)]
                needs = [f"{corpus}/{seed}/{arm.reference}/pretrain"]
            jobs.append(Job(f"{prefix}/pretrain", runs / "pretrain", [
                python, "-m", "recipe.pretrain", *common, "--out", str(runs / "pretrain"),
                "--epochs", str(args.pretrain_epochs), *flags], needs, tier, view,
                record_path(records, corpus, seed, arm_name, "pretrain"), earlier))
            needs_pretrain = [f"{prefix}/pretrain"]
        init = ["--init", str(runs / "pretrain")] if arm.pretrain is not None else []
        epochs = args.finetune_epochs + (args.pretrain_epochs if arm.pretrain is None else 0)
        jobs.append(Job(f"{prefix}/finetune", runs / "finetune", [
            python, "-m", "recipe.finetune", *common, "--out", str(runs / "finetune"), "--epochs", str(epochs),
            "--num-beams", str(args.num_beams), *init], needs_pretrain, tier,
            record=record_path(records, corpus, seed, arm_name, "finetune"), legacy=earlier))

    for corpus in args.corpora:  # within one tier and seed, jobs keep this order: corpora, then arms
        for seed in seeds_of(args, corpus):
            extra = seed >= args.base_seeds
            if corpus in MAIN_CORPORA:
                for arm in MAIN_ARMS:
                    if extra and arm not in CORE_ARMS:
                        continue  # more seeds only where the main comparison needs the power
                    add(corpus, seed, arm, 4 if extra else 0 if arm in CORE_ARMS else 1)
            elif corpus == MECHANISM_CORPUS and not extra:
                for arm in MECHANISM_ARMS:
                    add(corpus, seed, arm, 2)
            if corpus == args.ablation_corpus and seed < args.ablation_seeds:
                for arm in ABLATION_ARMS:
                    add(corpus, seed, arm, 3)
    wanted = {j.name for j in jobs if j.arm in args.arms}
    wanted |= {need for j in jobs if j.name in wanted for need in j.needs}  # an arm needs its reference run
    jobs = [j for j in jobs if j.name in wanted]
    return sorted(jobs, key=lambda j: (j.tier, j.seed))  # stable: corpora and arms keep their order


def legacy_runs(args: argparse.Namespace) -> dict[str, dict[str, set[int]]]:
    """{corpus: {arm: seeds}} that the earlier sittings in `--legacy` ran (empty without one)."""
    if not args.legacy:
        return {}
    results = json.loads(Path(args.legacy).read_text())["results"]
    return {corpus: {arm: {int(seed) for seed in seeds} for arm, seeds in arms.items()}
            for corpus, arms in results.items()}


def make_reference_view(reference: Path, view: Path, first_epoch: int) -> None:
    """A run directory whose trajectory is the reference run's checkpoints from `first_epoch` on (symlinks)."""
    from recipe.trajectory_store import TRAJECTORY_DIR, list_reference_checkpoints

    folder = view / TRAJECTORY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for epoch, path in list_reference_checkpoints(reference):
        link = folder / path.name
        if epoch >= first_epoch and not link.exists():
            link.symlink_to(path.resolve())


def still_to_run(jobs: list[Job]) -> list[Job]:
    """The jobs neither finished in their run directory nor archived, and the archived ones whose run directory
    one of those needs (an SCL arm reads its reference run's trajectory, finetuning starts from its pretraining
    checkpoint): they run again, and must reproduce their record."""
    by_name = {j.name: j for j in jobs}
    wanted = {j.name for j in jobs if not j.done and not j.archived and not j.legacy}
    frontier = list(wanted)
    while frontier:
        for need in by_name[frontier.pop()].needs:
            if need not in wanted and not by_name[need].done:
                wanted.add(need)
                frontier.append(need)
    return [j for j in jobs if j.name in wanted]


def run_jobs(jobs: list[Job], workers: int, log_dir: Path, on_done: Callable[[Job], None] | None = None) -> None:
    """Run the jobs still to run on `workers` threads, each job a subprocess; a job starts once the jobs it
    needs are done, and is dropped when one of them failed. `on_done(job)` follows each job that succeeded."""
    lock = threading.Lock()
    pending = still_to_run(jobs)
    finished, failed = {j.name for j in jobs if j not in pending}, set()

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
            if job.reference_view is not None:
                make_reference_view(*job.reference_view)
            log = log_dir / (job.name.replace("/", "_") + ".log")
            print(f"[start] {job.name}: {shlex.join(job.command)}", flush=True)
            started = time.perf_counter()
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "60"}
            with open(log, "a") as out:
                code = subprocess.call(job.command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
            seconds = time.perf_counter() - started
            if code == 0:
                record = {"seconds": round(seconds, 1), "command": job.command}
                (job.out / "study_done.json").write_text(json.dumps(record))
                try:
                    if on_done is not None:
                        on_done(job)
                except Exception as error:  # the run itself finished: what needs it may start; the report retries
                    print(f"[WARN ] {job.name}: finished, but {type(error).__name__}: {error}", flush=True)
            with lock:
                if code == 0:
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


def archive_job(args: argparse.Namespace, job: Job) -> None:
    """Keep what the report needs of a finished run in its record (`quality_records.py`)."""
    if job.stage == "finetune":
        outcome = archive_finetune(job.out, job.record, references_path(Path(args.records).resolve(), job.corpus))
    elif job.arm == "cl":  # the reference run whose trajectory the report's tables describe
        first_seed = job.seed == seeds_of(args, job.corpus)[0]
        analysis = Path(args.out).resolve() / "analysis" / job.corpus / f"seed{job.seed}"
        outcome = archive_pretrain(job.out, job.record, corpus_dir(args, job.corpus), analysis,
                                   twins_batch=args.batch_size if first_seed else 0)
    else:
        outcome = archive_pretrain(job.out, job.record, corpus_dir(args, job.corpus))
    print(f"[record] {job.name}: {outcome}", flush=True)


def archive_finished(args: argparse.Namespace, jobs: list[Job]) -> None:
    """Record every run finished in its run directory but not yet archived (runs finished before records
    existed, or whose archiving was interrupted)."""
    for job in jobs:
        if job.done and job.record is not None and not job.archived:
            archive_job(args, job)


def make_corpora(args: argparse.Namespace) -> None:
    for corpus, command in corpus_commands(args).items():
        if not (corpus_dir(args, corpus) / "index-test.json").exists():
            print(f"[corpus] {shlex.join(command)}", flush=True)
            subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def repro_check(args: argparse.Namespace) -> dict:
    """The smallest configuration (cl, seed 0, the first corpus) trained again in fresh processes, each with
    another PYTHONHASHSEED, into a new directory: every logged loss and every test score must equal the
    study's run. Returns the comparison and writes it to RESULTS/quality_repro.json."""
    corpus, seed, arm = args.corpora[0], args.seeds[0], "cl"
    original = run_dir(args, corpus, seed, arm)
    if not (original / "finetune" / "study_done.json").exists():
        raise SystemExit(f"{original}: the study's run is not finished yet")
    again = Path(args.out).resolve() / "repro" / arm
    jobs = [j for j in plan_jobs(argparse.Namespace(**{**vars(args), "arms": [arm]}))
            if j.corpus == corpus and j.seed == seed and j.arm == arm]
    for job in jobs:
        command = [str(again / job.stage) if part == str(job.out) else
                   str(again / "pretrain") if part == str(original / "pretrain") else part for part in job.command]
        if not (again / job.stage / "study_done.json").exists():
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(101 + len(job.stage))}
            print(f"[repro] {shlex.join(command)}", flush=True)
            subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
            (again / job.stage / "study_done.json").write_text(json.dumps({"command": command}))

    def losses(run: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    result = {"corpus": corpus, "seed": seed, "arm": arm}
    for stage in ("pretrain", "finetune"):
        a, b = losses(original / stage), losses(again / stage)
        result[f"{stage}_losses"] = len(a)
        result[f"{stage}_identical"] = a == b
    test_a = json.loads((original / "finetune" / "reports" / "test.json").read_text())
    test_b = json.loads((again / "finetune" / "reports" / "test.json").read_text())
    result["test_scores"] = {k: [test_a[k], test_b[k]] for k in ("bleu4", "bleu1", "rouge_l", "chrf")}
    result["test_identical"] = all(a == b for a, b in result["test_scores"].values())
    hyp_a = (original / "finetune" / "reports" / "test.hyp.tsv").read_text()
    result["hypotheses_identical"] = hyp_a == (again / "finetune" / "reports" / "test.hyp.tsv").read_text()
    (Path(args.results) / "quality_repro.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quality", help="where corpora and runs go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds-for", action="append", default=[], type=_corpus_seeds, metavar="CORPUS=N",
                        help="run seeds 0..N-1 on CORPUS instead of --seeds (a preset whose seeds spread more "
                             "needs more of them for the same interval); repeatable")
    parser.add_argument("--base-seeds", type=int, default=5,
                        help="seeds below this run every main arm; later seeds only cl, cl_masked and scl")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    # csl-like: its per-seed BLEU-4 differences spread ~2.5x less than phoenix-like's (sd 1.1 vs 2.7 over the
    # main comparison's seeds), so the ablations' few seeds say more there.
    parser.add_argument("--ablation-corpus", default="csl-like", choices=list(CORPORA))
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds 0..N-1 run the ablations")
    parser.add_argument("--train", type=int, default=0, help="training videos per corpus (0: the preset's)")
    parser.add_argument("--dev", type=int, default=0, help="dev videos (0: the preset's)")
    parser.add_argument("--test", type=int, default=0, help="test videos (0: the preset's)")
    parser.add_argument("--video-format", default="npy", choices=("npy", "mp4"),
                        help="the corpora's video members: npy (default: no codec noise, cheaper to read, so more "
                             "runs per CPU-hour) or mp4 (what a user stores; byte-identical too since mbtree=0)")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="runs at once (each uses one thread)")
    parser.add_argument("--report", action="store_true", help="only aggregate the finished runs")
    parser.add_argument("--repro-check", action="store_true", help="rerun the smallest configuration and compare")
    parser.add_argument("--results", default=str(RESULTS), help="where quality.md, quality.json and plots go")
    parser.add_argument("--legacy", default=str(RESULTS / "quality_legacy.json"),
                        help="the scores of earlier sittings whose run directories and records are gone: their "
                             "seeds are not run again, and count in the report ('' for none)")
    parser.add_argument("--records", default=str(RESULTS / "quality_runs"),
                        help="where each finished run's record is kept (committed: the report and later seeds "
                             "need them after the run directories are gone)")
    args = parser.parse_args(argv)
    args.seeds_for = dict(args.seeds_for)
    return args


def _corpus_seeds(text: str) -> tuple[str, list[int]]:
    corpus, _, count = text.partition("=")
    if corpus not in CORPORA or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CORPUS=N with CORPUS one of {', '.join(CORPORA)}, "
                                         f"e.g. phoenix-like=16 for seeds 0..15")
    return corpus, list(range(int(count)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(args.out).resolve()
    jobs = plan_jobs(args)
    if args.repro_check:
        repro_check(args)
        return
    if not args.report:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        make_corpora(args)
        archive_finished(args, jobs)
        run_jobs(jobs, args.workers, root / "logs", on_done=lambda job: archive_job(args, job))
    from quality_report import write_report  # the aggregation: benchmarks/quality_report.py

    write_report(root, args, jobs, Path(args.results))


if __name__ == "__main__":
    main()
