"""The GPU path in one run: asserts what must hold on CUDA and records what it costs (benchmarks/gpu_check.sh
installs the wheels and calls this; see there for the commands).

Stages, each recorded in OUT/gpu_check.json and summarised in OUT/gpu.md (the text for
benchmarks/results/gpu.md); a stage that fails is recorded with its error and the run exits 1 at the end:

1. environment: versions, the GPU, flash-attn, the GPU's measured dense bf16 matmul rate;
2. attention: the kernel each module gets in bf16 (the decoder never flash), and sdpa vs flash-attn on the
   encoders where flash-attn is installed (agreement and speed);
3. training steps of `base` and `large` in bf16 (ds_configs/zero2_bf16.json) on PHOENIX-length clips:
   losses finite, samples/s, frames/s, peak memory, and model-FLOPs utilisation from counted FLOPs
   (benchmarks/model_flops.py) against the GPU's bf16 peak (goal for `large`: >= 40%);
4. loader: frames/s of the training loader on npy shards at 224 px with the machine's cores, against the
   frames/s `large` consumes;
5. the chain on the device: pretrain -> resume -> finetune (bf16 beam-search evaluation) -> export ->
   translate -> evaluate, every loss finite;
6. the torch lower bound: the 2-rank (gloo) gradient test of the global contrastive loss on this torch.

`--dry-run` runs every stage on the CPU at toy sizes (the tiny preset, 32 px, 8 frames, bf16 on
DeepSpeed's CPU accelerator), so CI keeps this script working (tests/test_gpu_check.py); its figures mean
nothing and it never writes benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

NOMINAL_BF16_TFLOPS = 790.0  # H200 dense bf16 matmul, measured on the lent machine (ENVIRONMENT.md)
MFU_GOAL = 0.40
PHOENIX_FRAMES = 117


class Sizes:
    """What each stage runs: real sizes on a GPU, toy sizes in a dry run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.presets = ("tiny",) if dry_run else ("base", "large")  # the same code path; base costs minutes on a CPU
        self.frames = 8 if dry_run else PHOENIX_FRAMES
        self.frame_size = 32 if dry_run else 224
        self.micro_batch = {"tiny": 2} if dry_run else {"base": 16, "large": 8}
        self.warmup_steps, self.timed_steps = (1, 1) if dry_run else (3, 10)
        self.loader_samples = 16 if dry_run else 640
        self.chain_frame_size = 16 if dry_run else 32


# ------------------------------------------------------------------------------------------------ stages

def environment(sizes: Sizes, out: Path) -> dict:
    import deepspeed
    import transformers
    from transformers.utils import is_flash_attn_2_available

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "transformers": transformers.__version__,
                            "deepspeed": deepspeed.__version__, "flash_attn": is_flash_attn_2_available(),
                            "cpus": len(os.sched_getaffinity(0)), "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16_matmul_tflops"] = round(matmul_tflops(), 1)
    return info


def matmul_tflops(n: int = 8192, repeats: int = 20) -> float:
    """The GPU's dense bf16 matmul rate, measured (what 100% MFU means on this machine)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def attention(sizes: Sizes, out: Path) -> dict:
    from recipe.attention import attention_kernels, choose_attn_implementation
    from recipe.modeling import SignTranslationModel
    from recipe.presets import build_config

    chosen = choose_attn_implementation(torch.bfloat16)
    model = SignTranslationModel(build_config("tiny", vocab_size=64, attn_implementation=chosen))
    kernels = attention_kernels(model)
    assert kernels["decoder"] != "flash_attention_2", kernels
    result: dict[str, Any] = {"bf16_choice": chosen, "kernels": kernels}
    if chosen == "flash_attention_2":
        result["encoder_sdpa_vs_flash"] = compare_encoder_kernels(sizes)
    else:
        result["encoder_sdpa_vs_flash"] = "flash-attn not installed here: sdpa everywhere"
    return result


def compare_encoder_kernels(sizes: Sizes) -> dict:
    """The large visual encoder on a padded bf16 batch under sdpa and flash: outputs on real tokens, fwd+bwd time."""
    from transformers import MBartConfig
    from transformers.models.mbart.modeling_mbart import MBartEncoder

    results, outputs = {}, {}
    lengths = [30, 18, 25, 9]
    tokens = torch.randn(len(lengths), max(lengths), 1024, device="cuda", dtype=torch.bfloat16)
    mask = torch.arange(max(lengths), device="cuda")[None] < torch.tensor(lengths, device="cuda")[:, None]
    for kernel in ("sdpa", "flash_attention_2"):
        torch.manual_seed(0)
        config = MBartConfig(vocab_size=1, d_model=1024, encoder_layers=12, encoder_attention_heads=16,
                             encoder_ffn_dim=4096, max_position_embeddings=1024, dropout=0.0,
                             attn_implementation=kernel)
        encoder = MBartEncoder(config).to("cuda", torch.bfloat16)
        encoder.embed_tokens = None
        run = lambda: encoder(inputs_embeds=tokens, attention_mask=mask).last_hidden_state  # noqa: E731
        hidden = run()
        outputs[kernel] = hidden[mask].float()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            run().float().square().mean().backward()
        torch.cuda.synchronize()
        results[f"{kernel}_ms_per_fwd_bwd"] = round(100 * (time.perf_counter() - start), 2)
    results["max_abs_diff_real_tokens"] = float((outputs["sdpa"] - outputs["flash_attention_2"]).abs().max())
    assert results["max_abs_diff_real_tokens"] < 0.1, results
    return results


def training_steps(sizes: Sizes, out: Path) -> dict:
    """bf16 steps of each preset through the recipe's own engine setup; throughput, memory and MFU."""
    import deepspeed

    from benchmarks.model_flops import random_inputs
    from recipe.attention import choose_attn_implementation
    from recipe.contrastive import ContrastiveLoss
    from recipe.dist import init_distributed
    from recipe.ds_config import resolve_ds_config
    from recipe.modeling import SignTranslationModel
    from recipe.presets import build_config
    from recipe.pretrain import PretrainingModule
    from recipe.seeding import enable_tf32

    init_distributed()
    enable_tf32()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    peak_tflops = NOMINAL_BF16_TFLOPS
    results = {}
    for preset in sizes.presets:
        batch = sizes.micro_batch[preset]
        config = build_config(preset, vocab_size=3000, attn_implementation=choose_attn_implementation(torch.bfloat16),
                              max_visual_tokens=sizes.frames // 4 + 8, frame_size=sizes.frame_size)
        module = PretrainingModule(SignTranslationModel(config))
        ds_config = resolve_ds_config(REPO / "ds_configs" / "zero2_bf16.json", batch, 1, 1, lr=1e-4, weight_decay=0.01,
                                      gradient_clipping=1.0, warmup_steps=1, total_steps=100,
                                      allow_cpu_bf16=sizes.dry_run)
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=[p for p in module.parameters()
                                                                                if p.requires_grad], config=ds_config)
        loss_fn = ContrastiveLoss()
        inputs = random_inputs(batch, sizes.frames, sizes.frame_size, 24, 3000, device, torch.bfloat16)
        frames, frame_mask, text_ids, text_mask, labels = inputs
        ids = torch.arange(batch)

        def step() -> float:
            features, scale, translation = engine(frames, frame_mask, text_ids, text_mask, labels,
                                                  num_real_frames=batch * sizes.frames)
            loss = loss_fn(features, scale, ids, ids)["loss"] + translation
            engine.backward(loss)
            engine.step()
            return loss

        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:  # the first step, counted: forward + backward
            losses = [step()]
        step_flops = counter.get_total_flops()
        for _ in range(sizes.warmup_steps - 1):
            losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(sizes.timed_steps):
            losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / sizes.timed_steps
        values = [float(loss) for loss in losses]
        assert all(math.isfinite(value) for value in values), values
        row = {"micro_batch": batch, "frames_per_video": sizes.frames, "frame_size": sizes.frame_size,
               "seconds_per_step": round(seconds, 4), "samples_per_s": round(batch / seconds, 2),
               "frames_per_s": round(batch * sizes.frames / seconds, 1), "tflop_per_step": round(step_flops / 1e12, 3),
               "losses_first_last": [round(values[0], 4), round(values[-1], 4)],
               "attention": config._attn_implementation}
        if device.type == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            row["mfu_vs_nominal_peak"] = round(step_flops / seconds / (peak_tflops * 1e12), 3)
            measured = environment_cache.get("bf16_matmul_tflops")
            if measured:
                row["mfu_vs_measured_matmul"] = round(step_flops / seconds / (measured * 1e12), 3)
            if preset == "large":
                row["mfu_goal_met"] = row["mfu_vs_nominal_peak"] >= MFU_GOAL
        results[preset] = row
        engine.destroy()
        del engine, module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


environment_cache: dict[str, Any] = {}


def loader(sizes: Sizes, out: Path) -> dict:
    """The training loader on npy shards at the training frame size, with this machine's cores."""
    from recipe.build import loader_workers
    from sharded_data.reader import ReaderConfig, make_train_loader

    shards = out / "loader_shards"
    shutil.rmtree(shards, ignore_errors=True)
    run([sys.executable, "-m", "sharded_data.synth", "--out", str(shards), "--preset", "base", "--video-format", "npy",
         "--train", str(sizes.loader_samples), "--dev", "0", "--test", "0", "--frame-size",
         f"{sizes.frame_size}x{sizes.frame_size}", "--num-workers", str(max(1, len(os.sched_getaffinity(0)) - 1)),
         "--samples-per-shard", "8", "--no-progress"], out / "loader_synth.log")
    workers = loader_workers(-1, 1)
    config = ReaderConfig(frame_size=sizes.frame_size, max_frames=PHOENIX_FRAMES, output="uint8",
                          num_workers=workers, pin_memory=torch.cuda.is_available())
    frames, first = 0, None
    start = time.perf_counter()
    for batch in make_train_loader(shards, "train", 4, 0, 1, 0, config):
        if first is None:
            first = time.perf_counter()
            continue
        frames += int(batch["frame_mask"].sum())
    rate = frames / (time.perf_counter() - first)
    result = {"workers": workers, "frames_per_s": round(rate, 1), "frames_per_s_per_worker": round(rate / workers, 1),
              "first_batch_s": round(first - start, 2)}
    consumed = environment_cache.get("model_frames_per_s")
    if consumed:
        result["large_consumes_frames_per_s"] = consumed
        result["loader_over_model"] = round(rate / consumed, 2)
    return result


# What this process's own process group exported (recipe.dist.init_distributed): a child must start its own.
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run(command: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """A subprocess that must succeed; its output goes to `log` and is returned."""
    inherited = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    done = subprocess.run(command, cwd=REPO, env={**inherited, **(env or {}), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {done.returncode}; see {log}:\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout + done.stderr


def finite_losses(run_dir: Path) -> list[float]:
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    return losses


def chain(sizes: Sizes, out: Path) -> dict:
    """pretrain -> resume -> finetune -> export -> translate -> evaluate on this machine's device, in bf16."""
    import numpy as np
    from PIL import Image

    data, runs = out / "chain_shards", out / "chain_runs"
    for folder in (data, runs):
        shutil.rmtree(folder, ignore_errors=True)
    side = sizes.chain_frame_size
    run([sys.executable, "-m", "sharded_data.synth", "--out", str(data), "--preset", "tiny", "--video-format", "npy",
         "--train", "32", "--dev", "8", "--test", "8", "--frame-size", f"{side}x{side}", "--samples-per-shard", "8",
         "--num-workers", "2", "--no-progress"], out / "chain_synth.log")
    env = {"DS_ACCELERATOR": "cpu"} if sizes.dry_run else {}
    common = ["--data", str(data), "--deepspeed_config", str(REPO / "ds_configs" / "zero2_bf16.json"),
              "--micro-batch-size", "4", "--frame-size", str(side), "--max-frames", "32", "--vocab-size", "64",
              "--lr", "1e-3", "--warmup-steps", "2", "--log-every", "1", "--eval-every", "0", "--num-workers", "2"]
    pretrain = [sys.executable, "-m", "recipe.pretrain", *common, "--out", str(runs / "pretrain"), "--save-every", "3"]
    run([*pretrain, "--max-steps", "6"], out / "chain_pretrain.log", env)
    resumed = run([*pretrain, "--max-steps", "9"], out / "chain_resume.log", env)
    assert "resumed at step 6" in resumed, "the second run did not resume from step 6"
    pretrain_losses = finite_losses(runs / "pretrain")
    run([sys.executable, "-m", "recipe.finetune", *common, "--out", str(runs / "finetune"), "--init",
         str(runs / "pretrain"), "--max-steps", "4", "--num-beams", "3", "--max-new-tokens", "12"],
        out / "chain_finetune.log", env)
    finetune_losses = finite_losses(runs / "finetune")
    run([sys.executable, "-m", "recipe.convert_to_hf", str(runs / "finetune"), "--out", str(runs / "hf")],
        out / "chain_export.log", env)
    # One test video as a PNG frame folder (what recipe.translate reads besides video files)
    from sharded_data.reader import IndexedShardReader

    sample = IndexedShardReader(data, "test").get(0)
    frames_dir = runs / "test_video"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(np.asarray(sample["frames"])):
        Image.fromarray(frame).save(frames_dir / f"images{index + 1:04d}.png")
    translation = run([sys.executable, "-m", "recipe.translate", "--model", str(runs / "hf"), str(frames_dir),
                       "--num-beams", "3"], out / "chain_translate.log", env)
    assert f"{frames_dir}\t" in translation, "recipe.translate printed no translation line"

    run([sys.executable, "-m", "recipe.evaluate", "--model", str(runs / "hf"), "--data", str(data), "--split", "test",
         "--out", str(runs / "evaluate"), "--num-beams", "3"], out / "chain_evaluate.log", env)
    scores = json.loads((runs / "evaluate" / "test.json").read_text())
    on_cuda = json.loads((runs / "pretrain" / "environment.json").read_text())["cuda_available"]
    assert on_cuda or sizes.dry_run, "the chain ran without CUDA on a GPU machine"
    return {"pretrain_losses_first_last": [round(pretrain_losses[0], 4), round(pretrain_losses[-1], 4)],
            "finetune_losses_first_last": [round(finetune_losses[0], 4), round(finetune_losses[-1], 4)],
            "translation": next((line.split("\t", 1)[1] for line in translation.splitlines()
                                 if line.startswith(f"{frames_dir}\t")), "")[:200], "test_bleu4": scores.get("bleu4"),
            "cuda": on_cuda}


def torch_lower_bound(sizes: Sizes, out: Path) -> dict:
    """tests/test_contrastive.py's 2-rank gradient tests (gloo) on this machine's torch."""
    output = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_contrastive.py",
                  "-k", "two_ranks_match_one_process"], out / "torch_lower_bound.log")
    passed = re.search(r"(\d+) passed", output)
    return {"torch": torch.__version__, "passed": int(passed.group(1)) if passed else 0,
            "differentiable_gather": "all_gather_single" if hasattr(
                __import__("torch.distributed._functional_collectives", fromlist=["x"]), "all_gather_single")
            else "all_gather_tensor_autograd"}


# ----------------------------------------------------------------------------------------------- report

def markdown(results: dict, command: str, dry_run: bool) -> str:
    env = results.get("environment", {}).get("result", {})
    lines = ["# GPU check" + (" (DRY RUN on CPU: toy sizes, the figures mean nothing)" if dry_run else ""), "",
             f"Command: `{command}`", "",
             f"Machine: {env.get('device')}, {env.get('cpus')} CPUs; torch {env.get('torch')} (CUDA {env.get('cuda')}), "
             f"transformers {env.get('transformers')}, DeepSpeed {env.get('deepspeed')}, flash-attn "
             f"{'installed' if env.get('flash_attn') else 'not installed'}; measured bf16 matmul "
             f"{env.get('bf16_matmul_tflops', 'n/a')} TFLOP/s.", "", "| stage | status | result |", "|---|---|---|"]
    for stage, record in results.items():
        status = "ok" if record["ok"] else "FAILED"
        summary = json.dumps(record.get("result", record.get("error", "")))[:600].replace("|", "/")
        lines.append(f"| {stage} | {status} | `{summary}` |")
    steps = results.get("training_steps", {}).get("result", {})
    if steps:
        lines += ["", "| preset | micro-batch | s/step | samples/s | frames/s | peak GiB | TFLOP/step | MFU (vs 790) |",
                  "|---|---|---|---|---|---|---|---|"]
        for preset, row in steps.items():
            lines.append(f"| {preset} | {row['micro_batch']} x {row['frames_per_video']} frames @ {row['frame_size']} px | "
                         f"{row['seconds_per_step']} | {row['samples_per_s']} | {row['frames_per_s']} | "
                         f"{row.get('peak_memory_gib', 'n/a')} | {row['tflop_per_step']} | "
                         f"{row.get('mfu_vs_nominal_peak', 'n/a')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu.md and the stages' logs")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (CI)")
    parser.add_argument("--stages", nargs="*", help="run only these stages (default: all)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    if args.dry_run:
        os.environ["DS_ACCELERATOR"] = "cpu"  # bf16 configs on DeepSpeed's CPU accelerator
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes(args.dry_run)
    stages: dict[str, Callable[[Sizes, Path], dict]] = {
        "environment": environment, "attention": attention, "training_steps": training_steps, "loader": loader,
        "chain": chain, "torch_lower_bound": torch_lower_bound}
    if args.dry_run:
        stages.pop("torch_lower_bound")  # the CPU suite runs that test itself
    results: dict[str, dict] = {}
    for name, stage in stages.items():
        if args.stages and name not in args.stages:
            continue
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result = stage(sizes, out)
            results[name] = {"ok": True, "seconds": round(time.perf_counter() - started, 1), "result": result}
            if name == "environment":
                environment_cache.update(result)
            if name == "training_steps" and "large" in result:
                environment_cache["model_frames_per_s"] = result["large"]["frames_per_s"]
        except Exception as error:  # recorded, and the run goes on: one failure must not hide the others
            results[name] = {"ok": False, "seconds": round(time.perf_counter() - started, 1),
                             "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
        print(f"[gpu_check] {name}: {'ok' if results[name]['ok'] else 'FAILED ' + results[name]['error']}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    command = "bash benchmarks/gpu_check.sh" + (" --dry-run" if args.dry_run else "")
    (out / "gpu.md").write_text(markdown(results, command, args.dry_run))
    print((out / "gpu.md").read_text())
    return 0 if all(record["ok"] for record in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
