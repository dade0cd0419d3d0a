"""Model size and CPU speed per preset.

    .venv/bin/python benchmarks/bench_model.py --out benchmarks/results/model.md

Parameter counts (total / trainable with LoRA) for every preset; `large` is built on the meta device,
so no memory is spent. Speed: one stage-1 training step (translation loss + token-level contrastive
loss over the batch, forward + backward) on random frames at the preset's frame size, timed after a
warm-up, reported per sample as wall time and as process CPU time. Only tiny and base are timed
(large needs a GPU). One thread by default: with several threads on an oversubscribed machine, OpenMP
spin-waiting inflates CPU time, while one thread's CPU time is the compute cost per core.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recipe.lora import count_parameters
from recipe.modeling import SignTranslationModel
from recipe.presets import PRESETS, build_config
from recipe.similarity import similarity

VOCAB_SIZE = 3000  # a trimmed / corpus-trained vocabulary (large also reported at mBART-50's full vocabulary)


def parameter_rows() -> list[str]:
    rows, large_totals = [], []
    for preset in PRESETS:
        vocabularies = [VOCAB_SIZE, None] if preset == "large" else [VOCAB_SIZE]
        for vocab in vocabularies:
            config = build_config(preset, vocab_size=vocab)
            with torch.device("meta"):
                model = SignTranslationModel(config)
            full = count_parameters(model)
            trainable = count_parameters(model, trainable_only=True)
            if preset == "large":
                large_totals.append(full)
            rows.append(
                f"| {preset} | {config.vocab_size:,} | {config.frame_cnn} | {config.d_model} | "
                f"{config.visual_layers}+{config.text_encoder_layers}+{config.decoder_layers} | "
                f"{full / 1e6:.1f}M | {trainable / 1e6:.1f}M |"
            )
    saved = large_totals[1] - large_totals[0]
    rows += [
        "",
        f"Trimming large's vocabulary from mBART-50's 250,054 tokens to {VOCAB_SIZE:,} (`python -m recipe.vocab_trim`) "
        f"removes {saved / 1e6:.1f}M parameters ({saved / large_totals[1]:.0%}). Trainable counts do not depend on the "
        "vocabulary: under LoRA the shared embedding / LM head is frozen, so training updates the sign encoder, "
        "the projections and the adapters.",
    ]
    return rows


def stage1_step(model: SignTranslationModel, frames, frame_mask, labels, text_mask) -> None:
    visual = model.sign_encoder(frames, frame_mask)
    translation = model(labels=labels, encoder_outputs=visual).loss
    features = model.contrastive_features(frames, frame_mask, labels.clamp_min(1), text_mask, visual=visual)
    logits = model.logit_scale.exp() * similarity(features.video, features.video_mask, features.text, features.text_mask)
    targets = torch.arange(logits.shape[0])
    contrastive = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    (translation + contrastive).backward()


def time_preset(preset: str, batch: int, frames_per_video: int, repeats: int, label_len: int = 16) -> tuple[float, float]:
    """Median seconds per sample: (wall clock, process CPU time summed over threads)."""
    torch.manual_seed(0)
    config = build_config(preset, vocab_size=VOCAB_SIZE)
    model = SignTranslationModel(config).train()
    size = config.frame_size
    frames = torch.randn(batch, frames_per_video, 3, size, size)
    frame_mask = torch.ones(batch, frames_per_video, dtype=torch.bool)
    frame_mask[-1, frames_per_video * 3 // 4 :] = False  # one padded clip, as in real batches
    labels = torch.randint(4, VOCAB_SIZE, (batch, label_len))
    text_mask = torch.ones(batch, label_len, dtype=torch.bool)
    stage1_step(model, frames, frame_mask, labels, text_mask)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        stage1_step(model, frames, frame_mask, labels, text_mask)
        wall.append((time.perf_counter() - start_wall) / batch)
        cpu.append((time.process_time() - start_cpu) / batch)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the markdown table here (else print it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads; 1 (default) makes CPU time a steady per-core cost even on a shared machine",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    lines = [
        "## Parameters",
        "",
        "| preset | vocab | frame CNN | d_model | layers (visual+text+decoder) | total | trainable (LoRA r=16 on decoder q/v, text encoder frozen) |",
        "|---|---|---|---|---|---|---|",
        *parameter_rows(),
        "",
        "## Stage-1 step on CPU (translation + token-level contrastive loss, forward + backward)",
        "",
        "| preset | batch x frames x size | wall s / sample (median) | CPU s / sample (median, all threads) |",
        "|---|---|---|---|",
    ]
    load_before = os.getloadavg()[0]
    for preset, batch, frames in [("tiny", 4, 32), ("base", 2, 32)]:
        wall, cpu = time_preset(preset, batch, frames, args.repeats)
        size = PRESETS[preset]["frame_size"]
        lines.append(f"| {preset} | {batch} x {frames} x {size}x{size} | {wall:.3f} | {cpu:.3f} |")
    lines += [
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores "
        f"({platform.machine()}), {args.repeats} timed repeats after one warm-up; 1-min load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after timing (wall time is only meaningful "
        "on an idle machine; CPU time is the steadier number on a shared one).",
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Model benchmark\n\nCommand: `.venv/bin/python benchmarks/bench_model.py --out benchmarks/results/model.md`\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
