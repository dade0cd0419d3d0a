"""Memory at scale, on paper: the `large` preset's model states under ZeRO-2/3 and the global-batch contrastive loss.

Three parts, printed as markdown:

1. Parameters of the `large` preset, built on the meta device (no memory, no download), as a real
   `--init-mbart` run trains it: LoRA on the visual transformer's and the decoder's q/v projections, text
   encoder frozen, the shared 250k-token embedding (tied to the LM head) frozen with the decoder. Counted
   once per tensor (`model.parameters()` already skips tied duplicates; DeepSpeed's own `model_to_params` dedups by
   `data_ptr()`, which is 0 for every meta tensor, so it cannot be used here).
2. Per-GPU memory of the model states for 1, 8 and 64 GPUs from DeepSpeed's estimators
   (`estimate_zero2_model_states_mem_needs_all_cold`, `estimate_zero3_model_states_mem_needs_all_cold`; the
   numbers come from the functions they print with, `estimate_zero{2,3}_model_states_mem_needs`,
   no offload). The estimators assume every parameter trains (16-bit param + 16-bit grad + fp32 master,
   momentum, variance = 18 bytes, partitioned except the 16-bit params under ZeRO-2). So they get the
   TRAINABLE count, and the frozen weights are added as what DeepSpeed keeps of them: 16-bit copies,
   replicated on every GPU under ZeRO-2, partitioned over the GPUs under ZeRO-3. ZeRO-3's
   `largest_layer_params` (4 bytes each: the gathered layer) is the largest module overall, the frozen
   shared embedding, because ZeRO-3 gathers frozen layers too.
3. The loss at global batch G on N GPUs (local batch b = G / N), per rank, with Lv video and Lt text tokens
   and dim E (`recipe.contrastive` + `recipe.similarity`, token kind):
     gathered features  G x (Lv + Lt) x E x s bytes, and as much again for their gradient (s = 2 in bf16)
     token similarity   the two local x global calls (v2t: b videos x G texts; t2v: G videos x b texts).
                        `similarity` works in [64 x 64]-pair blocks, so WITHOUT grad its peak is one block:
                        min(b,64) x min(G,64) x Lv x Lt x (2s + 2) bytes (einsum output, its masked copy,
                        the pair mask and its negation). WITH grad (training) autograd keeps, for every
                        block, the masked similarities (s bytes) and the negated mask (1 byte) for the
                        backward of amax/masked_fill, plus the two amax results (s bytes x (Lv + Lt)):
                        2 calls x b x G x [Lv x Lt x (s + 1) + (Lv + Lt) x s] bytes stay alive until the
                        backward. Chunking bounds evaluation and PS scoring, not training.
   The table says where the loss alone stops fitting beside the model states on an 80 GB GPU.
4. The activations the sign encoder keeps for its backward, per frame, measured on CPU in fp32 for a few
   224 px frames through the large preset's sign encoder (ResNet-18 + temporal convs + 12-layer transformer;
   random weights, only sizes matter) and taken as half that in bf16. With them, the largest local batch b
   (and G = b x GPUs) whose model states + activations + loss fit. (The frozen text encoder keeps nothing;
   the LoRA decoder's activations over ~40 tokens are small beside 300 frames and are left out.)
5. Validation on CPU: the peak tensor memory of real calls (`torch.distributed._tools.mem_tracker.MemTracker`,
   which counts every tensor storage created inside it) against the formulas above, in fp32 (s = 4).

Run:
    .venv/bin/python benchmarks/bench_memory_scale.py            # ~1 min on a loaded 2-core CPU
    .venv/bin/python benchmarks/bench_memory_scale.py --smoke    # small validation shapes
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

GiB = 2**30
CHUNK = 64  # recipe.similarity's default chunk_size


@dataclass
class ParamCounts:
    total: int
    trainable: int
    largest_layer: int
    largest_layer_name: str
    by_part: dict[str, tuple[int, int]]  # part -> (params, trainable)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_large_preset(lora_r: int, max_frames: int) -> ParamCounts:
    from recipe.modeling import SignTranslationModel
    from recipe.presets import build_config

    config = build_config("large", use_lora=True, lora_r=lora_r, lora_alpha=2 * lora_r, attn_implementation="eager",
                          max_visual_tokens=max_frames // 4 + 8)
    with torch.device("meta"):
        model = SignTranslationModel(config)
    params = dict(model.named_parameters())  # tied weights appear once
    by_part: dict[str, tuple[int, int]] = {}
    for name, p in params.items():
        part = "lora adapters" if "lora_" in name else name.split(".")[0]
        count, trainable = by_part.get(part, (0, 0))
        by_part[part] = (count + p.numel(), trainable + (p.numel() if p.requires_grad else 0))
    largest, largest_name = 0, ""
    for name, module in model.named_modules():  # DeepSpeed's definition: a module's own (non-recursive) params
        size = sum(p.numel() for p in module.parameters(recurse=False))
        if size > largest:
            largest, largest_name = size, name
    return ParamCounts(total=sum(p.numel() for p in params.values()),
                       trainable=sum(p.numel() for p in params.values() if p.requires_grad),
                       largest_layer=largest, largest_layer_name=largest_name, by_part=by_part)


def model_states_per_gpu(counts: ParamCounts, stage: int, gpus: int, gpus_per_node: int = 8) -> float:
    """Bytes per GPU: DeepSpeed's estimate for the trainable params + the frozen params' 16-bit weights."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    per_node = min(gpus, gpus_per_node)
    nodes = gpus // per_node
    if stage == 2:
        _, gpu = estimate_zero2_model_states_mem_needs(counts.trainable, per_node, nodes, cpu_offload=False)
        return gpu + 2 * counts.frozen
    _, gpu, _ = estimate_zero3_model_states_mem_needs(counts.trainable, counts.largest_layer, per_node, nodes,
                                                      cpu_offload=False, cpu_offload_params=False)
    return gpu + 2 * counts.frozen / gpus


def estimator_printout(counts: ParamCounts, gpus: int) -> str:
    """What DeepSpeed's `_all_cold` estimators print for the trainable parameters."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    per_node = min(gpus, 8)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        estimate_zero2_model_states_mem_needs_all_cold(counts.trainable, per_node, gpus // per_node)
        estimate_zero3_model_states_mem_needs_all_cold(counts.trainable, counts.largest_layer, per_node, gpus // per_node)
    return buffer.getvalue()


# --- the loss -----------------------------------------------------------------------------------------------
def loss_bytes(global_batch: int, gpus: int, lv: int, lt: int, dim: int, s: int = 2) -> dict[str, float]:
    """Per-rank bytes of the training loss at global batch G on `gpus` ranks (see the module docstring)."""
    b = global_batch // gpus
    features = 2 * global_batch * (lv + lt) * dim * s  # gathered tokens + their gradient
    saved = 2 * kept_for_backward(b, global_batch, lv, lt, s)  # both similarity calls, every block kept
    block = min(b, CHUNK) * min(global_batch, CHUNK) * lv * lt * (2 * s + 2)  # the transient of the block being computed
    return {"features": features, "similarity": saved + block, "total": features + saved + block}


def kept_for_backward(rows: int, cols: int, lv: int, lt: int, s: int) -> int:
    """Bytes autograd keeps from one token-similarity call of rows x cols pairs (masked sims, mask, amax results)."""
    return rows * cols * (lv * lt * (s + 1) + (lv + lt) * s)


def largest_fitting_batch(budget: float, gpus: int, lv: int, lt: int, dim: int, s: int = 2) -> int:
    """Largest G (a multiple of gpus) whose loss fits in `budget` bytes per rank (0 if none)."""
    if budget <= 0:
        return 0
    lo, hi = 0, 1
    while loss_bytes(hi * gpus, gpus, lv, lt, dim, s)["total"] <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if loss_bytes(mid * gpus, gpus, lv, lt, dim, s)["total"] <= budget else (lo, mid)
    return lo * gpus


# --- validation on CPU --------------------------------------------------------------------------------------
def measured_peak(fn, *external: torch.Tensor) -> tuple[int, int]:
    """(peak, still-alive-at-exit) bytes of tensors created inside fn, tracked by torch's MemTracker."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*external)
    with tracker:
        baseline = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"]
        result = fn()
        alive = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"] - baseline
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - baseline
    del result
    return peak, alive


def sign_encoder_activations_per_frame(frames: int, frame_size: int) -> float:
    """fp32 bytes per frame kept for the backward by the large preset's sign encoder (one video, train mode)."""
    from recipe.modeling import SignTranslationModel
    from recipe.presets import build_config

    # The visual transformer trained fully (no LoRA on it): an upper bound on what the paper's LoRA keeps, and
    # torch's MemTracker cannot hook the frozen weights LoRA leaves.
    config = build_config("large", use_lora=True, lora_modules=["decoder"], attn_implementation="eager",
                          frame_size=frame_size, max_visual_tokens=frames // 4 + 8)
    with torch.device("meta"):
        model = SignTranslationModel(config)  # the whole model costs nothing on meta; only the encoder is made real
    encoder = model.sign_encoder.to_empty(device="cpu").train()
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0.0, 0.02)
    video = torch.randn(1, frames, 3, frame_size, frame_size, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, frames, dtype=torch.bool)
    _, kept = measured_peak(lambda: encoder(video, mask), *encoder.parameters(), video, mask)
    return kept / frames


def largest_fitting_local_batch(budget: float, gpus: int, per_video: float, lv: int, lt: int, dim: int, s: int) -> int:
    """Largest b per GPU with b x per_video activations + the loss at G = b x gpus within `budget` bytes."""
    b = 0
    while (b + 1) * per_video + loss_bytes((b + 1) * gpus, gpus, lv, lt, dim, s)["total"] <= budget:
        b += 1
    return b


def validate(b: int, g: int, lv: int, lt: int, dim: int) -> list[tuple[str, float, float]]:
    """(what, measured MiB, formula MiB) for one v2t similarity call, without and with grad, fp32."""
    from recipe.similarity import similarity

    gen = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(b, lv, dim, generator=gen), dim=-1).requires_grad_()
    text = torch.nn.functional.normalize(torch.randn(g, lt, dim, generator=gen), dim=-1).requires_grad_()
    video_mask = torch.ones(b, lv, dtype=torch.bool)
    text_mask = torch.ones(g, lt, dtype=torch.bool)
    s = 4
    pairs_block = min(b, CHUNK) * min(g, CHUNK) * lv * lt
    rows = []
    with torch.no_grad():
        peak, _ = measured_peak(lambda: similarity(video, video_mask, text, text_mask), video, text)
    rows.append(("no grad: peak (one block)", peak, pairs_block * (2 * s + 2)))
    peak, alive = measured_peak(lambda: similarity(video, video_mask, text, text_mask), video, text)
    kept = kept_for_backward(b, g, lv, lt, s)
    rows.append(("with grad: kept for backward", alive, kept))
    # the last block's transient (einsum output + masked copy + two masks) on top of the earlier blocks' kept part
    rows.append(("with grad: peak", peak, kept + pairs_block * (s + 1)))
    return [(what, measured / 2**20, formula / 2**20) for what, measured, formula in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small validation shapes, fewer table rows")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (GiB; 80 GB taken as 80 GiB)")
    parser.add_argument("--frames", type=int, default=300, help="frames per video (Lv ~ frames / 4)")
    parser.add_argument("--text-tokens", type=int, default=40)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--bytes", type=int, default=2, help="bytes per feature/similarity element (bf16 = 2)")
    parser.add_argument("--activation-frames", type=int, default=8, help="224 px frames for the activation measurement")
    args = parser.parse_args(argv)
    import deepspeed.runtime.zero.stage3  # noqa: F401  (its accelerator warning goes to stdout: before the tables)

    lv, lt = args.frames // 4, args.text_tokens
    counts = count_large_preset(args.lora_r, args.frames)
    dim = 1024  # the large preset's projection_dim (E)

    print(f"## Parameters of the `large` preset (LoRA r={args.lora_r} on visual transformer and decoder q/v, "
          "frozen text encoder)\n")
    print("| part | params | trainable |\n|---|---:|---:|")
    for part, (n, t) in sorted(counts.by_part.items(), key=lambda kv: -kv[1][0]):
        print(f"| {part} | {n / 1e6:.2f}M | {t / 1e6:.2f}M |")
    print(f"| **total** | **{counts.total / 1e6:.1f}M** | **{counts.trainable / 1e6:.1f}M** "
          f"(frozen {counts.frozen / 1e6:.1f}M) |")
    print(f"\nlargest layer: `{counts.largest_layer_name}` ({counts.largest_layer / 1e6:.1f}M params)\n")

    gpu_counts = (1, 8) if args.smoke else (1, 8, 64)
    print("## Model states per GPU (GiB), DeepSpeed estimator for the trainable params + frozen 16-bit weights\n")
    print("| GPUs | ZeRO-2 | ZeRO-3 | ZeRO-2 if all params trained | ZeRO-3 if all params trained |\n|---:|---:|---:|---:|---:|")
    everything = ParamCounts(counts.total, counts.total, counts.largest_layer, counts.largest_layer_name, {})
    states = {}
    for n in gpu_counts:
        states[n] = {stage: model_states_per_gpu(counts, stage, n) for stage in (2, 3)}
        full = {stage: model_states_per_gpu(everything, stage, n) for stage in (2, 3)}
        print(f"| {n} | {states[n][2] / GiB:.2f} | {states[n][3] / GiB:.2f} | {full[2] / GiB:.2f} | {full[3] / GiB:.2f} |")
    print("\nDeepSpeed's own printout for the trainable params on 8 GPUs:\n\n```\n" + estimator_printout(counts, 8) + "```\n")

    budget = args.gpu_gib * GiB
    print(f"## The loss per rank vs global batch G (E={dim}, Lv={lv}, Lt={lt}, {args.bytes}-byte elements)\n")
    print("| GPUs | G | b per GPU | gathered features + grad GiB | token similarity kept for backward GiB | loss total GiB | "
          "+ ZeRO-2 states | + ZeRO-3 states | fits 80 GB (Z2 / Z3)? |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    batches = (64, 256, 1024) if args.smoke else (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    for n in (g for g in gpu_counts if g > 1):
        for g in batches:
            if g < n:
                continue
            loss = loss_bytes(g, n, lv, lt, dim, args.bytes)
            z2, z3 = loss["total"] + states[n][2], loss["total"] + states[n][3]
            print(f"| {n} | {g} | {g // n} | {loss['features'] / GiB:.2f} | {loss['similarity'] / GiB:.2f} | "
                  f"{loss['total'] / GiB:.2f} | {z2 / GiB:.1f} | {z3 / GiB:.1f} | "
                  f"{'yes' if z2 <= budget else 'no'} / {'yes' if z3 <= budget else 'no'} |")
    print("\nLargest global batch whose loss fits beside the model states (activations of the model not counted):\n")
    print("| GPUs | ZeRO-2: max G (b per GPU) | ZeRO-3: max G (b per GPU) |\n|---:|---:|---:|")
    for n in gpu_counts:
        cells = []
        for stage in (2, 3):
            g = largest_fitting_batch(budget - states[n][stage], n, lv, lt, dim, args.bytes)
            cells.append(f"{g} ({g // n})" if g else "none (states alone exceed the GPU)")
        print(f"| {n} | {cells[0]} | {cells[1]} |")

    act_frames, act_size = (8, 32) if args.smoke else (args.activation_frames, 224)
    per_frame = sign_encoder_activations_per_frame(act_frames, act_size)
    per_video = per_frame / 2 * args.frames  # bf16: half the fp32 bytes
    print(f"\n## With the sign encoder's activations ({per_frame / 2**20:.1f} MiB per {act_size} px frame in fp32, measured "
          f"on {act_frames} frames; {per_video / GiB:.2f} GiB per {args.frames}-frame video in bf16)\n")
    print("| GPUs | ZeRO-2: max b per GPU (G) | ZeRO-3: max b per GPU (G) | loss share of the memory at that b (Z2) |\n"
          "|---:|---:|---:|---:|")
    for n in gpu_counts:
        cells, share = [], ""
        for stage in (2, 3):
            b = largest_fitting_local_batch(budget - states[n][stage], n, per_video, lv, lt, dim, args.bytes)
            cells.append(f"{b} ({b * n})")
            if stage == 2 and b:
                share = f"{100 * loss_bytes(b * n, n, lv, lt, dim, args.bytes)['total'] / budget:.2f}%"
        print(f"| {n} | {cells[0]} | {cells[1]} | {share} |")

    b, g, vlv, vlt, vdim = (4, 128, 12, 8, 32) if args.smoke else (32, 256, lv, lt, 256)
    print(f"\n## Validation: one v2t similarity call on CPU, fp32, b={b}, G={g}, Lv={vlv}, Lt={vlt}, E={vdim}, "
          f"chunk {CHUNK} (MemTracker)\n")
    print("| quantity | measured MiB | formula MiB | measured / formula |\n|---|---:|---:|---:|")
    for what, measured, formula in validate(b, g, vlv, vlt, vdim):
        print(f"| {what} | {measured:.2f} | {formula:.2f} | {measured / formula:.3f} |")


if __name__ == "__main__":
    main()
