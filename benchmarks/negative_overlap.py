"""Which negatives does Pair Selection pick? Their sentences' word overlap, next to random negatives'.

For one reference run (the random arm of the quality study) and its corpus, three views:

- pairs: every negative pair of the training split, grouped by PS score quintile (delta, the paper's score:
  hardest = the pairs whose similarity grew most between the first and the last reference checkpoint);
- batches: the negative pairs that meet in one global batch, random batches vs the PS curriculum's batches
  at the first, middle and last pretraining epoch;
- mask: of those in-batch pairs, the ones the loss mask keeps (keep fraction 0.5 at the epoch's alpha).

Overlap of two sentences: word Jaccard (|A & B| / |A | B| over word sets) and "one word apart" (a word
multiset that differs in at most one word, so one substitution or one insertion). On a grammar corpus a
hard negative that is one word apart from the anchor is a near-paraphrase: pushing the two videos apart
teaches the encoder to tell one sign, and it is also the pair whose translations differ least.

    python benchmarks/negative_overlap.py RUN_DIR CORPUS_DIR [--epochs 6] [--batch-size 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from recipe.curriculum import CurriculumSchedule
from recipe.pair_selection import CurriculumBatchSampler, PairScorer, PairSelectionMask, RandomBatchSampler
from recipe.trajectory_store import load_trajectory
from sharded_data.format import load_index


def overlap_matrices(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Word Jaccard [N, N] and "at most one word apart" bool [N, N] of every sentence pair."""
    words = [t.lower().split() for t in texts]
    sets = [set(w) for w in words]
    counts = [Counter(w) for w in words]
    n = len(texts)
    jaccard = np.zeros((n, n), dtype=np.float32)
    one_apart = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i, n):
            union = len(sets[i] | sets[j])
            jaccard[i, j] = jaccard[j, i] = len(sets[i] & sets[j]) / union if union else 1.0
            shared = sum((counts[i] & counts[j]).values())
            one_apart[i, j] = one_apart[j, i] = max(len(words[i]), len(words[j])) - shared <= 1
    return jaccard, one_apart


def _summary(pairs: np.ndarray, jaccard: np.ndarray, one_apart: np.ndarray) -> dict:
    """pairs: int [P, 2] positions."""
    if len(pairs) == 0:
        return {"pairs": 0, "jaccard": float("nan"), "one_word_apart": float("nan")}
    rows, cols = pairs[:, 0], pairs[:, 1]
    return {"pairs": int(len(pairs)), "jaccard": float(jaccard[rows, cols].mean()),
            "one_word_apart": float(one_apart[rows, cols].mean())}


def analyse(run_dir: str, corpus_dir: str, epochs: int, batch_size: int, seed: int, keep_fraction: float = 0.5) -> dict:
    trajectory = load_trajectory(run_dir, load_tokens=False)
    index = load_index(corpus_dir, "train")
    text_by_id = dict(zip(index.sample_id, index.text))
    ids = trajectory.sample_ids.tolist()
    jaccard, one_apart = overlap_matrices([text_by_id[i] for i in ids])
    scorer = PairScorer(trajectory, "delta")
    scores = scorer.score_block(ids, ids).numpy()  # NaN on same-sentence pairs and the diagonal
    negatives = np.argwhere(~np.isnan(scores))

    result: dict = {"all negatives": _summary(negatives, jaccard, one_apart), "by PS score quintile": {}}
    ranks = np.argsort(np.argsort(scores[negatives[:, 0], negatives[:, 1]], kind="stable"), kind="stable")
    quintile = ranks * 5 // len(ranks)
    for q, name in enumerate(("1 easiest", "2", "3", "4", "5 hardest")):
        result["by PS score quintile"][name] = _summary(negatives[quintile == q], jaccard, one_apart)

    def in_batch(batches: list[list[int]], mask: PairSelectionMask | None = None) -> dict:
        pairs = []
        for batch in batches:
            positions = trajectory.positions(batch).numpy()
            valid = ~np.isnan(scores[np.ix_(positions, positions)])
            if mask is not None:
                valid &= mask(torch.as_tensor(batch), torch.as_tensor(batch)).numpy()
            rows, cols = np.nonzero(valid)
            pairs.append(np.stack([positions[rows], positions[cols]], axis=1))
        return _summary(np.concatenate(pairs), jaccard, one_apart)

    schedule = CurriculumSchedule("log")
    random_sampler = RandomBatchSampler(ids, batch_size, seed=seed)
    curriculum = CurriculumBatchSampler(scorer, batch_size, schedule, num_epochs=epochs, seed=seed, pool_size=512)
    mask = PairSelectionMask(scorer, schedule, num_epochs=epochs, keep_fraction=keep_fraction)
    result["in-batch"] = {}
    for epoch in sorted({0, (epochs - 1) // 2, epochs - 1}):
        mask.set_epoch(epoch)
        result["in-batch"][f"epoch {epoch} (alpha {curriculum.alpha(epoch):.2f})"] = {
            "random batches": in_batch(random_sampler.epoch_batches(epoch)),
            "PS batches": in_batch(curriculum.epoch_batches(epoch)),
            f"PS batches, mask keeps {keep_fraction:g}": in_batch(curriculum.epoch_batches(epoch), mask),
        }
    return result


def markdown(results: dict[str, dict]) -> list[str]:
    """results: label (e.g. "csl seed 0") -> analyse(...). Two tables: by score quintile, in-batch."""
    fmt = lambda s: f"{s['jaccard']:.2f} / {100 * s['one_word_apart']:.1f}%"  # noqa: E731
    labels = list(results)
    lines = ["| negative pairs | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
             "| all | " + " | ".join(fmt(results[l]["all negatives"]) for l in labels) + " |"]
    for q in results[labels[0]]["by PS score quintile"]:
        lines.append(f"| PS score quintile {q} | " + " | ".join(fmt(results[l]["by PS score quintile"][q]) for l in labels) + " |")
    lines += ["", "| in-batch negative pairs | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for epoch, kinds in results[labels[0]]["in-batch"].items():
        for kind in kinds:
            lines.append(f"| {epoch}: {kind} | " + " | ".join(fmt(results[l]["in-batch"][epoch][kind]) for l in labels) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a reference run (trajectories/ref-*)")
    parser.add_argument("corpus_dir", help="the shard folder it was trained on")
    parser.add_argument("--epochs", type=int, default=6, help="pretraining epochs of the PS run (the curriculum's length)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch of the PS run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = analyse(args.run_dir, args.corpus_dir, args.epochs, args.batch_size, args.seed)
    print("\n".join(markdown({"run": result})))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
