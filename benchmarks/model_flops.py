"""Training FLOPs of the sign translation model, counted by torch (torch.utils.flop_counter), not estimated.

`step_flops(model, ...)` counts one stage-1 training step (sign encoder, contrastive features and loss,
translation loss; forward + backward) on the inputs given: what model-FLOPs utilisation (MFU) is measured
against (benchmarks/gpu_check.sh). The counter sees matmuls, convolutions and attention, the usual MFU
convention (element-wise work is left out).

`flops_per_frame(preset, ...)` is the cost of one frame of a PHOENIX-length video, for a preset at its frame
size, cheaply on a CPU: the frame CNN is counted on one frame at full size and scaled by the number of frames
(a convolution's FLOPs are linear in frames), everything else on the whole video at a small frame size
(the transformers never see pixels). benchmarks/bench_data.py turns it into the frames/s one GPU consumes.

    .venv/bin/python benchmarks/model_flops.py --preset large      # prints GFLOP per frame and per video
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from recipe.contrastive import contrastive_loss, gather_features  # noqa: E402
from recipe.modeling import SignTranslationModel  # noqa: E402
from recipe.presets import build_config  # noqa: E402

PHOENIX_MEAN_FRAMES = 117  # PHOENIX-2014T's mean video length (ENVIRONMENT.md)
SENTENCE_TOKENS = 24  # a PHOENIX sentence with the language code and </s>
VOCAB_SIZE = 3000  # a trimmed vocabulary (bench_model.py)
SMALL_SIDE = 32


def stage1_loss(model: SignTranslationModel, frames, frame_mask, text_ids, text_mask, labels) -> torch.Tensor:
    """What PretrainingModule + PretrainingTask compute in one step (one process: the gather is the identity)."""
    visual = model.sign_encoder(frames, frame_mask)
    features = model.contrastive_features(frames, frame_mask, text_ids, text_mask, visual=visual)
    ids = torch.arange(frames.shape[0])
    batch = gather_features(features, ids, ids)
    contrastive = contrastive_loss(batch, model.logit_scale.clamp(0.0, math.log(100.0)))["loss"]
    return contrastive + model(encoder_outputs=visual, labels=labels).loss


def random_inputs(batch: int, frames: int, side: int, tokens: int, vocab: int, device, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, frames, 3, side, side, generator=generator).to(device, dtype)
    frame_mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    text_ids = torch.randint(4, vocab, (batch, tokens), generator=generator).to(device)
    text_mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    return pixels, frame_mask, text_ids, text_mask, text_ids.clone()


def step_flops(model: SignTranslationModel, *inputs) -> int:
    """FLOPs of forward + backward of one stage-1 step on `inputs` (frames, frame_mask, text_ids, text_mask, labels)."""
    with FlopCounterMode(display=False) as counter:
        stage1_loss(model, *inputs).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def cnn_flops_per_frame(model: SignTranslationModel, side: int) -> float:
    """Forward + backward FLOPs of the frame CNN per side x side frame (two frames: BatchNorm needs a batch)."""
    pixels = torch.randn(2, 3, side, side)
    with FlopCounterMode(display=False) as counter:
        model.sign_encoder.frame_cnn(pixels).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def flops_per_frame(preset: str, frames: int = PHOENIX_MEAN_FRAMES, tokens: int = SENTENCE_TOKENS,
                    frame_size: int | None = None) -> dict[str, float]:
    """Training FLOPs per frame of a `frames`-frame video with a `tokens`-token sentence (see module docstring)."""
    torch.manual_seed(0)
    config = build_config(preset, vocab_size=VOCAB_SIZE, attn_implementation="sdpa", max_visual_tokens=frames // 4 + 8,
                          dropout=0.0)
    model = SignTranslationModel(config).train()
    side = frame_size or config.frame_size
    batch = 2  # a contrastive loss needs a negative; FLOPs are per video below
    small = step_flops(model, *random_inputs(batch, frames, SMALL_SIDE, tokens, VOCAB_SIZE, "cpu"))
    cnn_small, cnn_full = cnn_flops_per_frame(model, SMALL_SIDE), cnn_flops_per_frame(model, side)
    per_video = small / batch + frames * (cnn_full - cnn_small)
    return {"preset": preset, "frame_size": side, "frames": frames, "tokens": tokens, "per_video": per_video,
            "per_frame": per_video / frames, "cnn_share": frames * cnn_full / per_video}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="large", choices=("tiny", "base", "large"))
    parser.add_argument("--frames", type=int, default=PHOENIX_MEAN_FRAMES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = flops_per_frame(args.preset, args.frames)
    print(f"{args.preset}: {result['per_frame'] / 1e9:.2f} GFLOP per frame, {result['per_video'] / 1e12:.3f} TFLOP per "
          f"{args.frames}-frame video at {result['frame_size']} px (frame CNN {100 * result['cnn_share']:.0f}%)")


if __name__ == "__main__":
    main()
