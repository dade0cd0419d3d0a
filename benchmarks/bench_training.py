"""Speed and memory of the stage-1 training step: Pair Selection on vs off, tiny vs base, ZeRO-2 vs ZeRO-3.

What runs is the recipe's own code: `recipe.pretrain.PretrainingTask` (its samplers, its `compute_loss`,
its Pair Selection mask) on a `PretrainingModule` inside a real DeepSpeed engine, 2 CPU ranks on gloo,
fed from synthetic shards through the real indexed reader. One driver process prepares everything and
launches one `torchrun` job per configuration (so each job's peak memory is its own), one after the other:

  data        `python -m sharded_data.synth --preset tiny --train 128 --dev 16 --test 16` into a temp dir
  reference   a fake reference run: 3 trajectory checkpoints of random L2-normalised pooled AND token
              embeddings for every training sample id (so the PS mask scores with token similarity, as a
              real `--similarity token` run does); the scores are meaningless, their cost is real
  jobs        tiny x {ZeRO-2, ZeRO-3} with both arms (random negatives, and PS: curriculum sampler + PS
              mask in the loss) in ONE engine, steps alternating between the arms (ratios under the same
              load); base x {ZeRO-2, ZeRO-3} with random negatives

Per step and rank, timed around `compute_loss` + `engine.backward` + `engine.step` (batches are read
before the timed loop, so data loading is excluded; both arms use the same reader):
  step          the whole optimizer step (median over steps of the slowest rank; also the minimum, and the
                median CPU time of the step, `time.process_time`, which other jobs on a shared machine
                inflate much less than wall time)
  wait          a barrier before the gather (rank skew; would otherwise be counted as gather)
  gather        `gather_features` (autograd all-gather of tokens, masks, ids)
  loss fwd      `contrastive_loss`: two local x global similarity calls + masked CE (+ the PS mask)
  ps mask       the PairSelectionMask hook alone (inside loss fwd; PS arm only)
  loss bwd      backward of the loss to the local features, incl. the all-gather's reduce-scatter
  similarity    the two similarity calls alone, re-run without grad on the same tensors after the step
                (outside the step time), as in `benchmarks/bench_loss.py`
The loss is timed inside the real step the way bench_loss.py does it: the features are cut into leaves,
the loss runs forward and backward on the leaves, and the value handed back to DeepSpeed carries exactly
the leaves' gradients into the model (`TimedLoss`), so the engine's backward and step are unchanged.
The curriculum sampler's epoch plan is timed once and reported per step (amortised over an epoch).
Last, the PS mask alone at the large preset's shapes (b = 24 per GPU, G = 192, Lv = 75, Lt = 40, E = 1024),
pooled vs token scoring, in the driver (1 CPU thread): what the hook costs per step at scale.

Peak memory per rank: `resource.getrusage(RUSAGE_SELF).ru_maxrss` (peak resident set, KiB on Linux) at the
end of the job, and the resident set (psutil) after imports + process group, before the model is built.

Run (2 CPU ranks; each job is `OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/bench_training.py --job ...`):
    .venv/bin/python benchmarks/bench_training.py                 # everything, a few minutes
    .venv/bin/python benchmarks/bench_training.py --only tiny     # the PS on/off jobs only
    .venv/bin/python benchmarks/bench_training.py --smoke         # 1 rank, 16 px, 1 step: does it still run
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script (torchrun): make `recipe` and `sharded_data` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SYNTH_ARGS = ["--preset", "tiny", "--train", "128", "--dev", "16", "--test", "16"]
SMOKE_SYNTH_ARGS = ["--preset", "tiny", "--train", "32", "--dev", "4", "--test", "4"]
PHASES = ("wait", "gather", "loss fwd", "ps mask", "loss bwd", "similarity")


@dataclass
class Job:
    """One torchrun launch: a preset under one ZeRO config, with one or both negative arms."""

    name: str
    preset: str
    zero: str  # ds_configs/<zero>.json
    arms: list[str]
    micro_batch: int
    max_frames: int
    frame_size: int
    steps: int
    warmup: int
    extra: list[str] = field(default_factory=list)


def default_jobs(args: argparse.Namespace) -> list[Job]:
    if args.smoke:
        return [Job("smoke", "tiny", "zero2", ["random", "ps"], micro_batch=2, max_frames=8, frame_size=16,
                    steps=1, warmup=0)]
    tiny = dict(micro_batch=args.tiny_batch, max_frames=args.tiny_frames, frame_size=64, steps=args.tiny_steps, warmup=1)
    base = dict(micro_batch=args.base_batch, max_frames=args.base_frames, frame_size=args.base_frame_size,
                steps=args.base_steps, warmup=1)
    jobs = [Job("tiny-zero2", "tiny", "zero2", ["random", "ps"], **tiny),
            Job("tiny-zero3", "tiny", "zero3", ["random", "ps"], **tiny),
            Job("base-zero2", "base", "zero2", ["random"], **base),
            Job("base-zero3", "base", "zero3", ["random"], **base)]
    return [job for job in jobs if not args.only or job.name.startswith(args.only)]


# --- driver ----------------------------------------------------------------------------------------------
def make_fake_reference(data: Path, run_dir: Path, dim: int, video_tokens: int, text_tokens: int,
                        checkpoints: int = 3, seed: int = 0) -> Path:
    """A reference run directory holding `checkpoints` trajectory files of random embeddings for the train split."""
    import torch

    from recipe.trajectory_store import save_reference_checkpoint
    from sharded_data.format import load_index

    index = load_index(data, "train")
    n = index.num_samples
    gen = torch.Generator().manual_seed(seed)
    for k in range(checkpoints):
        video_mask = torch.arange(video_tokens)[None] < torch.randint(video_tokens // 2, video_tokens + 1, (n, 1), generator=gen)
        text_mask = torch.arange(text_tokens)[None] < torch.randint(text_tokens // 2, text_tokens + 1, (n, 1), generator=gen)
        unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)  # noqa: E731
        save_reference_checkpoint(run_dir, 2 * (k + 1), index.sample_id, index.sentence_id, unit(n, dim), unit(n, dim),
                                  unit(n, video_tokens, dim), video_mask, unit(n, text_tokens, dim), text_mask)
    return run_dir


def launch(job: Job, args: argparse.Namespace, data: Path, reference: Path, work: Path) -> dict:
    from recipe.dist import free_port

    result = work / f"{job.name}.json"
    worker_args = ["--job", json.dumps(job.__dict__), "--data", str(data), "--reference", str(reference),
                   "--work", str(work), "--result", str(result)]
    started = time.perf_counter()
    if args.nproc == 1:  # one rank needs no launcher: run it here (the smoke test saves an interpreter start)
        worker(parse_args(worker_args))
        return {**json.loads(result.read_text()), "wall_s": time.perf_counter() - started}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nproc_per_node", str(args.nproc), "--master_port", str(free_port()), str(Path(__file__).resolve()),
               *worker_args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"job {job.name} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - started
    return out


def report(results: list[dict]) -> str:
    """Markdown tables of every job's arms, then the PS / random comparison of each two-arm job."""
    lines = ["| job | arm | micro-batch x frames (mean T) x px | step s (median, slowest rank) | step s (min) | "
             "step CPU s (median) | samples/s per rank | gather+loss fwd+bwd s | share of step | ps mask s | "
             "PS plan s/step | peak RSS/rank MiB | RSS before model MiB |",
             "|---|---|---|" + "---:|" * 10]
    for res in results:
        job = res["job"]
        for arm, m in res["arms"].items():
            loss = m["gather"] + m["loss fwd"] + m["loss bwd"]
            cells = [job["name"], arm, f"{job['micro_batch']} x {m['frames_per_batch']:.1f} x {job['frame_size']}",
                     f"{m['step']:.3f}", f"{m['step_min']:.3f}", f"{m['step cpu']:.3f}",
                     f"{job['micro_batch'] / m['step']:.2f}", f"{loss:.4f}", f"{100 * loss / m['step']:.1f}%",
                     f"{m['ps mask']:.4f}", f"{m['plan_per_step']:.4f}", f"{res['peak_rss_mib']:.0f}",
                     f"{res['rss_before_model_mib']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| job | arm | wait | gather | loss fwd | of which ps mask | loss bwd | similarity (2 calls, no grad) | "
              "sampler plan (epoch) s | batches/epoch | params (trainable) |", "|---|---|" + "---:|" * 8 + "---|"]
    for res in results:
        for arm, m in res["arms"].items():
            cells = [res["job"]["name"], arm, *(f"{m[p]:.4f}" for p in PHASES), f"{m['plan_s']:.3f}",
                     str(m["batches_per_epoch"]), f"{res['params'] / 1e6:.1f}M ({res['trainable'] / 1e6:.1f}M)"]
            lines.append("| " + " | ".join(cells) + " |")
    for res in results:
        arms = res["arms"]
        if {"random", "ps"} <= set(arms):
            ps, rnd = arms["ps"], arms["random"]
            direct = (ps["ps mask"] + ps["plan_per_step"]) / rnd["step"]
            lines.append(f"\n{res['job']['name']}: PS/random step time = {ps['step'] / rnd['step']:.3f} by median, "
                         f"{ps['step_min'] / rnd['step_min']:.3f} by min, {ps['step cpu'] / rnd['step cpu']:.3f} by CPU "
                         "time (end to end, same engine, alternating steps); PS's own work (mask + amortised plan) = "
                         f"{100 * direct:.2f}% of a random-negatives step")
    return "\n".join(lines)


def driver(args: argparse.Namespace) -> None:
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training-"))
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "shards"
    if not args.data:
        synth = SMOKE_SYNTH_ARGS if args.smoke else SYNTH_ARGS
        from sharded_data.synth import main as synth_main

        with contextlib.redirect_stdout(io.StringIO()):  # its JSON summary is not part of this report
            if synth_main([*synth, "--out", str(data), "--no-progress", "--num-workers", "1"]) != 0:
                raise SystemExit(f"python -m sharded_data.synth {' '.join(synth)} failed (see its error above)")
    jobs = default_jobs(args)
    tiny = jobs[0]
    # Token lengths as the tiny model produces them: ~frames/4 + the summary token; a typical sentence.
    make_fake_reference(data, work / "reference", dim=128, video_tokens=tiny.max_frames // 4 + 1, text_tokens=16)
    load = os.getloadavg()
    print(f"- bench_training: torch {torch.__version__}, {os.cpu_count()} CPUs, {args.nproc} ranks, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start", flush=True)
    results = []
    for job in jobs:
        res = launch(job, args, data, work / "reference", work)
        print(f"- {job.name}: {res['wall_s']:.0f} s, load average {res['load'][0]:.1f}", flush=True)
        results.append(res)
    load = os.getloadavg()
    print(f"- load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end\n")
    print(report(results))
    print(mask_at_scale_report(*((4, 16, 8, 6, 32) if args.smoke else (24, 192, 75, 40, 1024)), work / "reference-at-scale"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def mask_at_scale_report(b: int, g: int, lv: int, lt: int, dim: int, run_dir: Path, repeats: int = 2) -> str:
    """Time the PairSelectionMask hook at large-preset shapes (b local x G global samples), pooled vs token scoring.

    The hook runs on the CPU (it moves the ids there, scores, and moves the mask back), in this process's one
    thread; with `similarity="token"` its cost grows as b x G x Lv x Lt x E x (checkpoints used) x 2 directions.
    """
    import torch

    from recipe.curriculum import CurriculumSchedule
    from recipe.pair_selection import PairScorer, PairSelectionMask
    from recipe.trajectory_store import load_trajectory, save_reference_checkpoint

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)  # noqa: E731
    ids = torch.arange(g)
    for k in range(3):
        save_reference_checkpoint(run_dir, 2 * (k + 1), ids, ids.clone(), unit(g, dim), unit(g, dim), unit(g, lv, dim),
                                  torch.ones(g, lv, dtype=torch.bool), unit(g, lt, dim), torch.ones(g, lt, dtype=torch.bool))
    trajectory = load_trajectory(run_dir, load_tokens=True)
    lines = [f"\nPS mask at scale (1 CPU thread): b = {b} local x G = {g} global samples, Lv = {lv}, Lt = {lt}, E = {dim}, "
             "3 reference checkpoints, score delta\n", "| mask scoring | wall s per step | CPU s per step |", "|---|---:|---:|"]
    for kind in ("pooled", "token"):
        mask = PairSelectionMask(PairScorer(trajectory, "delta", similarity=kind), CurriculumSchedule("log"), num_epochs=10)
        mask(ids[:b], ids)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            mask(ids[:b], ids)
        lines.append(f"| {kind} | {(time.perf_counter() - start) / repeats:.4f} | {(time.process_time() - cpu) / repeats:.4f} |")
    return "\n".join(lines)


# --- worker (one rank of a torchrun job) -------------------------------------------------------------------
class PhaseClock:
    """Per-phase durations of the current step; `flush()` files them under the step's arm."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def time(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start
        return out

    def flush(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


class TimedLoss:
    """Stands in for a task's `ContrastiveLoss`: same loss, phases timed, graph cut at the features.

    The loss runs forward and backward on leaf copies of the features; the returned loss has the same value
    and sends exactly the leaves' gradients into the model, so DeepSpeed's backward/step are what they are.
    """

    def __init__(self, inner, clock: PhaseClock) -> None:
        self.inner, self.clock = inner, clock
        self.last = None  # tensors of the last call, for the no-grad similarity timing after the step

    def __call__(self, features, logit_scale, sample_ids, sentence_ids, selection=None, valid=None):
        import torch.distributed as dist

        from recipe.contrastive import contrastive_loss, gather_features
        from recipe.features import ContrastiveFeatures

        video = features.video.detach().requires_grad_()
        text = features.text.detach().requires_grad_()
        scale = logit_scale.detach().requires_grad_()
        leaves = ContrastiveFeatures(video, features.video_mask, text, features.text_mask)
        hook = None
        if selection is not None:
            hook = lambda local, full: self.clock.time("ps mask", selection, local, full)  # noqa: E731
        if dist.is_initialized():
            self.clock.time("wait", dist.barrier)
        batch = self.clock.time("gather", gather_features, leaves, sample_ids, sentence_ids, valid=valid)
        out = self.clock.time("loss fwd", contrastive_loss, batch, scale, similarity_kind=self.inner.similarity_kind,
                              same_sentence=self.inner.same_sentence, selection=hook, chunk_size=self.inner.chunk_size)
        self.clock.time("loss bwd", out["loss"].backward)
        carried = (features.video * video.grad).sum() + (features.text * text.grad).sum() + (logit_scale * scale.grad).sum()
        self.last = (leaves, batch)
        return {**out, "loss": out["loss"].detach() + carried - carried.detach()}

    def time_similarity(self) -> None:
        import torch

        from recipe.similarity import similarity

        leaves, batch = self.last
        kind = self.inner.similarity_kind
        with torch.no_grad():
            self.clock.time("similarity", lambda: (
                similarity(leaves.video, leaves.video_mask, batch.features.text, batch.features.text_mask, kind=kind),
                similarity(batch.features.video, batch.features.video_mask, leaves.text, leaves.text_mask, kind=kind)))


def worker(args: argparse.Namespace) -> None:
    import psutil
    import torch
    import torch.distributed as dist

    from recipe.build import build_model, initialize_engine, prepare_tokenizer
    from recipe.config import PretrainConfig, parse_config
    from recipe.dist import init_distributed
    from recipe.lora import count_parameters
    from recipe.pretrain import PretrainingModule, PretrainingTask
    from recipe.run_dir import RunDir
    from recipe.seeding import seed_everything
    from sharded_data.format import load_index

    job = Job(**json.loads(args.job))
    env = init_distributed()
    torch.set_num_threads(1)
    rss_before = psutil.Process().memory_info().rss
    out = Path(args.work) / f"run-{job.name}"

    def config_for(arm: str) -> PretrainConfig:
        return parse_config(PretrainConfig, [
            "--data", args.data, "--out", str(out), "--preset", job.preset,
            "--deepspeed_config", str(REPO / "ds_configs" / f"{job.zero}.json"),
            "--micro-batch-size", str(job.micro_batch), "--max-frames", str(job.max_frames),
            "--frame-size", str(job.frame_size), "--max-steps", str(job.warmup + job.steps), "--warmup-steps", "1",
            "--vocab-size", "64", "--num-workers", "0", "--negatives", arm, "--reference-run", args.reference,
            "--max-text-tokens", "32",
            # The PS arm times the in-loss mask too (an option, off by default): the costliest per-step PS piece.
            *(["--ps-keep-fraction", "0.5"] if arm == "ps" else []), *job.extra])

    configs = {arm: config_for(arm) for arm in job.arms}
    base_config = configs[job.arms[0]]
    seed_everything(base_config.seed)
    run = RunDir(out)
    tokenizer = prepare_tokenizer(base_config, run, load_index(args.data, "train").text)
    model = build_model(base_config, tokenizer, label_smoothing=base_config.label_smoothing)
    clock = PhaseClock()
    tasks, batches, plan_s = {}, {}, {}
    for arm, config in configs.items():
        task = PretrainingTask(config, env, run, tokenizer, frame_size=model.config.frame_size)
        task.loss_fn = TimedLoss(task.loss_fn, clock)
        start = time.perf_counter()
        task.sampler.epoch_batches(0)  # the epoch plan (curriculum: greedy PS batches; random: a permutation)
        plan_s[arm] = time.perf_counter() - start
        # Read before timing: data loading is the same for both arms and not what is compared here.
        batches[arm] = list(itertools.islice(itertools.cycle(task.epoch_batches(0, skip=0)), job.warmup + job.steps))
        tasks[arm] = task
    total = job.warmup + job.steps
    # counted before DeepSpeed: under ZeRO-3 a partitioned parameter reports numel() 0 afterwards
    params, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    frames_per_batch = {arm: statistics.mean(batch["frames"].shape[1] for batch in batches[arm]) for arm in job.arms}
    engine = initialize_engine(base_config, env, run, PretrainingModule(model), total_steps=total * len(job.arms))
    per_arm: dict[str, list[dict[str, float]]] = {arm: [] for arm in job.arms}
    for i in range(total):
        order = job.arms if i % 2 == 0 else job.arms[::-1]  # alternate who goes first: drift hits both arms alike
        for arm in order:
            task = tasks[arm]
            dist.barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            loss, _ = task.compute_loss(engine, batches[arm][i], progress=i / total)
            engine.backward(loss)
            engine.step()
            step, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            task.loss_fn.time_similarity()
            phases = clock.flush()
            phases["step"], phases["step cpu"] = step, cpu
            if i >= job.warmup:
                per_arm[arm].append(phases)
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, per_arm)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    peaks = [None] * env.world_size
    dist.all_gather_object(peaks, (peak, rss_before / 2**20))
    if env.rank == 0:
        arms = {}
        for arm in job.arms:
            summary = {}
            for name in ("step", "step cpu", *PHASES):
                # a step is as slow as its slowest rank: max over ranks per step, then the median over steps
                worst = [max(rank[arm][s].get(name, 0.0) for rank in gathered) for s in range(job.steps)]
                summary[name] = statistics.median(worst)
                if name == "step":
                    summary["step_min"] = min(worst)  # the least disturbed step: robust to other jobs' bursts
            n_batches = len(tasks[arm].sampler)
            summary.update(plan_s=plan_s[arm], batches_per_epoch=n_batches, plan_per_step=plan_s[arm] / n_batches,
                           frames_per_batch=frames_per_batch[arm])
            arms[arm] = summary
        result = {"job": job.__dict__, "arms": arms, "world_size": env.world_size, "load": os.getloadavg(),
                  "peak_rss_mib": max(p[0] for p in peaks), "rss_before_model_mib": max(p[1] for p in peaks),
                  "params": params, "trainable": trainable,
                  "zero_stage": engine.zero_optimization_stage()}
        Path(args.result).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 rank, 16 px frames, 1 step: checks that it runs")
    parser.add_argument("--only", default="", help="run only the jobs whose name starts with this (tiny, base)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per job")
    parser.add_argument("--data", default="", help="shard directory; default: synthesize tiny shards in --work")
    parser.add_argument("--work", default="", help="scratch directory (default: a new temp dir)")
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--tiny-batch", type=int, default=8)
    # 16 frames: every tiny synthetic clip keeps 16 after augmentation, so both arms' batches cost the same
    parser.add_argument("--tiny-frames", type=int, default=16)
    parser.add_argument("--tiny-steps", type=int, default=24)
    parser.add_argument("--base-batch", type=int, default=2)
    parser.add_argument("--base-frames", type=int, default=16)
    parser.add_argument("--base-frame-size", type=int, default=112)
    parser.add_argument("--base-steps", type=int, default=3)
    # set by the driver for a worker job
    parser.add_argument("--job", default="", help=argparse.SUPPRESS)
    parser.add_argument("--reference", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.nproc = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    worker(args) if args.job else driver(args)


if __name__ == "__main__":
    main()
