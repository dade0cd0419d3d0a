"""Cost of the global-batch contrastive loss (all-gather + similarity + cross-entropy) vs the rest of a step.

One training step of the contrastive stage, split into timed phases on every rank:
  model forward   sign encoder + text encoder + projections + translation loss (the "rest")
  (wait)          a barrier, so the gather below measures communication, not rank skew
  gather          gather_features: sizes, padded tokens, masks and ids from all ranks
  loss forward    contrastive_loss: the two similarity calls (local x global) + masked cross-entropy
    of which similarity   the two similarity calls alone, timed separately on the same tensors
  loss backward   back to the local features, through the all-gather's reduce-scatter
  model backward  from the features' gradients and the translation loss into the weights (the "rest")

Run (CPU, 2 ranks):
    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node 2 benchmarks/bench_loss.py
Options: --local-batch 16 --frames 124 (-> 32 video tokens) --text-tokens 24 --dim 256 --kind token
--iters 10 --preset tiny. Rank 0 prints a markdown table of median milliseconds per phase.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from recipe.contrastive import contrastive_loss, gather_features
from recipe.dist import init_distributed, print0
from recipe.features import ContrastiveFeatures
from recipe.modeling import SignTranslationModel
from recipe.presets import build_config
from recipe.similarity import similarity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local-batch", type=int, default=16, help="samples per rank")
    parser.add_argument("--frames", type=int, default=124, help="frames per video (tiny preset: ~frames/4 + 1 tokens)")
    parser.add_argument("--text-tokens", type=int, default=24)
    parser.add_argument("--dim", type=int, default=256, help="shared embedding dim E (projection_dim)")
    parser.add_argument("--kind", default="token", choices=("token", "cls", "mean"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = init_distributed()
    torch.manual_seed(0)  # the same weights on every rank, as after DeepSpeed's broadcast
    model = SignTranslationModel(build_config(args.preset, args.vocab_size, projection_dim=args.dim)).train()
    size = model.config.frame_size
    gen = torch.Generator().manual_seed(1 + env.rank)
    frames = torch.randn(args.local_batch, args.frames, 3, size, size, generator=gen)
    frame_mask = torch.ones(args.local_batch, args.frames, dtype=torch.bool)
    text_ids = torch.randint(4, args.vocab_size, (args.local_batch, args.text_tokens), generator=gen)
    text_mask = torch.ones_like(text_ids, dtype=torch.bool)
    sample_ids = torch.arange(args.local_batch) + env.rank * args.local_batch
    sentence_ids = sample_ids.clone()
    logit_scale = torch.nn.Parameter(torch.tensor(2.659))

    timings: dict[str, list[float]] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings.setdefault(name, []).append(time.perf_counter() - start)
        return result

    shapes = None
    for _ in range(args.warmup + args.iters):
        dist.barrier()
        model.zero_grad(set_to_none=True)

        def model_forward():
            visual = model.sign_encoder(frames, frame_mask)
            features = model.contrastive_features(frames, frame_mask, text_ids, text_mask, visual=visual)
            translation = model(encoder_outputs=visual, labels=text_ids).loss
            return features, translation

        features, translation = timed("model forward", model_forward)
        shapes = (tuple(features.video.shape), tuple(features.text.shape))
        # Leaves cut the graph, so the loss's backward and the model's backward are timed apart.
        video = features.video.detach().requires_grad_()
        text = features.text.detach().requires_grad_()
        leaves = ContrastiveFeatures(video, features.video_mask, text, features.text_mask)
        # Without this barrier "gather" would mostly measure how long the faster rank waits for the slower one.
        timed("(wait for the slowest rank)", dist.barrier)
        batch = timed("gather", lambda: gather_features(leaves, sample_ids, sentence_ids))
        out = timed("loss forward (similarity + CE)", lambda: contrastive_loss(batch, logit_scale, args.kind, similarity_fn=similarity))
        with torch.no_grad():
            timed("  of which similarity", lambda: (
                similarity(video, features.video_mask, batch.features.text, batch.features.text_mask, kind=args.kind),
                similarity(batch.features.video, batch.features.video_mask, text, features.text_mask, kind=args.kind),
            ))
        timed("loss backward (incl. reduce-scatter)", lambda: out["loss"].backward())
        timed("model backward", lambda: torch.autograd.backward(
            [features.video, features.text, translation], [video.grad, text.grad, torch.ones(())]))

    medians = {name: statistics.median(values[args.warmup:]) * 1000 for name, values in timings.items()}
    # every rank's medians; the slowest rank sets the pace of a synchronous step
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, medians)
    worst = {name: max(rank[name] for rank in gathered) for name in medians}
    loss_part = worst["gather"] + worst["loss forward (similarity + CE)"] + worst["loss backward (incl. reduce-scatter)"]
    rest = worst["model forward"] + worst["model backward"]
    print0(f"world size {env.world_size} x {args.local_batch} samples = global batch {env.world_size * args.local_batch}; "
           f"{args.kind} similarity; local video {shapes[0]}, text {shapes[1]}; preset {args.preset}; "
           f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per rank; {args.iters} iterations\n")
    print0("| phase | median ms (slowest rank) |\n|---|---:|")
    for name, value in worst.items():
        print0(f"| {name} | {value:.1f} |")
    print0(f"| **gather + similarity + loss (fwd+bwd)** | **{loss_part:.1f}** ({100 * loss_part / (loss_part + rest):.1f}% of the step) |")
    print0(f"| **the rest: model fwd+bwd** | **{rest:.1f}** |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
