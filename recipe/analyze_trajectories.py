"""Analyse the similarity trajectories of negative pairs recorded by a reference run.

    python -m recipe.analyze_trajectories RUN --out DIR [--high 0.5 --low 0.3] [--relative] [--max-pairs 200000]

For negative pairs (video i, text j of a different sentence) it compares the pooled cosine similarity at
the first and at the last reference checkpoint and counts the pairs that go high -> low (pushed away, as
contrastive learning intends), stay high, go low -> high, stay low, or anything else (touching the band
between the thresholds). A pair is "high" when s >= --high and "low" when s <= --low; with --relative the
two thresholds are quantiles of all sampled similarities over all checkpoints instead of absolute values
(useful when a small model's similarities crowd into a narrow range). Above --max-pairs ordered pairs,
a uniform random sample of them is used.

With the run's shard directory (`--data`, default: the run's own `data` setting) each pair also gets its
ground-truth kind (sharded_data.pair_stats: exact twin, hidden twin = same glosses and another text, one
sign apart, same signer, unrelated), and the table shows the categories per kind: what "stays high"
really consists of. Exact twins are never negatives; their row shows the same-sentence pairs. Corpora
without glosses have no hidden-twin or one-sign-apart rows.

Writes DIR/trajectory_categories.{json,md} (with the paper's shares for comparison) and three plots:
trajectory_examples.png (example trajectories per category), delta_histogram.png (PS score delta of
negatives vs same-sentence pairs, which are never scored as negatives) and curriculum_schedules.png
(alpha per epoch for every schedule).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recipe.curriculum import SCHEDULES, CurriculumSchedule
from recipe.trajectory_store import Trajectory, load_trajectory
from sharded_data.pair_stats import KIND_LABELS, KINDS, PairKinds, PairSample, load_pair_samples

CATEGORIES = ("high_to_low", "stays_high", "low_to_high", "stays_low", "other")
LABELS = {
    "high_to_low": "high -> low",
    "stays_high": "stays high",
    "low_to_high": "low -> high",
    "stays_low": "stays low",
    "other": "other",
}
# Shares reported by the SCL-SLT paper (arXiv 2604.22374) for its reference run; the rest is not reported.
PAPER_SHARES = {"high_to_low": 0.36, "stays_high": 0.32, "low_to_high": 0.18}


def categorize(first: np.ndarray, last: np.ndarray, high: float, low: float) -> np.ndarray:
    """Category index (into CATEGORIES) of each pair from its first and last similarity."""
    if low > high:
        raise ValueError(f"the low threshold ({low}) must not exceed the high one ({high})")
    start_high, start_low = first >= high, first <= low
    end_high, end_low = last >= high, last <= low
    out = np.full(first.shape, CATEGORIES.index("other"), dtype=np.int64)
    # Checked in reverse priority so that, with high == low, a value on the threshold counts as high.
    out[start_low & end_low] = CATEGORIES.index("stays_low")
    out[start_low & end_high] = CATEGORIES.index("low_to_high")
    out[start_high & end_low] = CATEGORIES.index("high_to_low")
    out[start_high & end_high] = CATEGORIES.index("stays_high")
    return out


def negative_pairs(trajectory: Trajectory, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(video ids, text ids) of negative pairs: all ordered pairs of different sentences, or a uniform sample."""
    ids, sentences = trajectory.sample_ids.numpy(), trajectory.sentence_ids.numpy()
    n = len(ids)
    if n * (n - 1) <= max_pairs:
        rows, cols = np.nonzero(sentences[:, None] != sentences[None, :])
    else:
        # Draw with replacement (N^2 >> max_pairs makes repeats rare), then drop same-sentence draws.
        rows = rng.integers(0, n, size=2 * max_pairs)
        cols = rng.integers(0, n, size=2 * max_pairs)
        keep = np.flatnonzero(sentences[rows] != sentences[cols])[:max_pairs]
        rows, cols = rows[keep], cols[keep]
    return ids[rows], ids[cols]


def same_sentence_pairs(trajectory: Trajectory, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i != j) of samples sharing a sentence, or a uniform sample of them."""
    ids, sentences = trajectory.sample_ids.numpy(), trajectory.sentence_ids.numpy()
    order = np.argsort(sentences, kind="stable")
    _, starts, counts = np.unique(sentences[order], return_index=True, return_counts=True)
    rows, cols = [], []
    for start, count in zip(starts[counts > 1], counts[counts > 1]):
        members = order[start : start + count]
        a, b = np.meshgrid(members, members, indexing="ij")
        off = a != b
        rows.append(a[off])
        cols.append(b[off])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    if len(rows) > max_pairs:
        pick = rng.choice(len(rows), size=max_pairs, replace=False)
        rows, cols = rows[pick], cols[pick]
    return ids[rows], ids[cols]


def analyze(
    trajectory: Trajectory,
    high: float = 0.5,
    low: float = 0.3,
    relative: bool = False,
    max_pairs: int = 200_000,
    seed: int = 0,
    samples: list[PairSample] | None = None,
) -> tuple[dict, dict]:
    """Return (summary for JSON, arrays for the plots). `samples`: the training split's ground truth, indexed
    by sample id (`sharded_data.pair_stats.load_pair_samples`), for the categories per pair kind."""
    if trajectory.num_checkpoints < 2:
        raise ValueError(f"trajectory analysis needs >= 2 reference checkpoints, got {trajectory.num_checkpoints}")
    rng = np.random.default_rng(seed)
    video_ids, text_ids = negative_pairs(trajectory, max_pairs, rng)
    sims = trajectory.pair_similarities(video_ids, text_ids).numpy()  # [K, n]
    if relative:
        high_value, low_value = (float(np.quantile(sims, q)) for q in (high, low))
    else:
        high_value, low_value = high, low
    category = categorize(sims[0], sims[-1], high_value, low_value)
    counts = np.bincount(category, minlength=len(CATEGORIES))
    delta = sims[-1] - sims[0]
    same_video, same_text = same_sentence_pairs(trajectory, max_pairs, rng)
    same_sims = trajectory.pair_similarities(same_video, same_text).numpy()
    same_delta = same_sims[-1] - same_sims[0]
    n = int(len(category))
    summary = {
        "run_checkpoints": [str(p) for p in trajectory.paths],
        "reference_epochs": trajectory.epochs,
        "num_samples": trajectory.num_samples,
        "num_negative_pairs": n,
        "pairs_sampled": bool(trajectory.num_samples * (trajectory.num_samples - 1) > max_pairs),
        "thresholds": {"high": high_value, "low": low_value, "relative": relative, "given": [high, low]},
        "counts": {c: int(k) for c, k in zip(CATEGORIES, counts)},
        "shares": {c: (float(k) / n if n else 0.0) for c, k in zip(CATEGORIES, counts)},
        "paper_shares": PAPER_SHARES,
        "delta_negatives": _stats(delta),
        "delta_same_sentence": _stats(same_delta),
        "num_same_sentence_pairs": int(len(same_delta)),
    }
    if samples is not None:
        same_category = categorize(same_sims[0], same_sims[-1], high_value, low_value)
        summary["by_kind"] = categories_by_kind(samples, video_ids, text_ids, category, same_category)
    arrays = {"sims": sims, "category": category, "delta": delta, "same_delta": same_delta}
    return summary, arrays


def categories_by_kind(samples: list[PairSample], video_ids: np.ndarray, text_ids: np.ndarray,
                       category: np.ndarray, same_category: np.ndarray) -> dict:
    """{kind: {pairs, counts, shares}}: the trajectory categories of the negative pairs of each ground-truth
    kind, plus the same-sentence pairs as the exact-twin row (they are never negatives)."""
    if int(max(video_ids.max(initial=-1), text_ids.max(initial=-1))) >= len(samples):
        raise ValueError(f"the trajectory has sample ids up to {int(max(video_ids.max(), text_ids.max()))} but the "
                         f"shard directory's train split has {len(samples)} samples: --data is not this run's data")
    kinds = PairKinds(samples)
    kind_of = np.array([KINDS.index(kinds.kind(int(i), int(j))) for i, j in zip(video_ids, text_ids)], dtype=np.int64)
    out = {}
    for position, kind in enumerate(KINDS):
        members = same_category if kind == "exact_twin" else category[kind_of == position]
        counts = np.bincount(members, minlength=len(CATEGORIES))
        total = int(counts.sum())
        out[kind] = {"pairs": total, "counts": {c: int(k) for c, k in zip(CATEGORIES, counts)},
                     "shares": {c: (float(k) / total if total else 0.0) for c, k in zip(CATEGORIES, counts)}}
    out["has_gloss"] = kinds.has_gloss
    out["has_signer"] = kinds.has_signer
    return out


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {"mean": float(values.mean()), "std": float(values.std()), "p05": float(q[0]), "median": float(q[1]), "p95": float(q[2])}


def markdown_table(summary: dict) -> str:
    t = summary["thresholds"]
    lines = [
        f"# Similarity trajectories of negative pairs ({summary['num_negative_pairs']} pairs"
        f"{', sampled' if summary['pairs_sampled'] else ''}; {summary['num_samples']} samples; "
        f"reference epochs {summary['reference_epochs']})",
        "",
        f"high: s >= {t['high']:.4g}, low: s <= {t['low']:.4g}"
        + (f" (quantiles {t['given'][0]} / {t['given'][1]} of all sampled similarities)" if t["relative"] else ""),
        "",
        "| category | pairs | share | paper |",
        "|---|---:|---:|---:|",
    ]
    for c in CATEGORIES:
        paper = f"~{PAPER_SHARES[c]:.0%}" if c in PAPER_SHARES else "n/a"
        lines.append(f"| {LABELS[c]} | {summary['counts'][c]} | {summary['shares'][c]:.1%} | {paper} |")
    neg, same = summary["delta_negatives"], summary["delta_same_sentence"]
    lines += ["", f"delta (last - first) of negatives: mean {neg.get('mean', float('nan')):.4f}, "
              f"median {neg.get('median', float('nan')):.4f}"]
    if same:
        lines.append(
            f"delta of same-sentence pairs ({summary['num_same_sentence_pairs']}, never scored as negatives): "
            f"mean {same['mean']:.4f}, median {same['median']:.4f}"
        )
    if "by_kind" in summary:
        lines += ["", kinds_table(summary["by_kind"])]
    return "\n".join(lines) + "\n"


def kinds_table(by_kind: dict) -> str:
    """Categories per ground-truth pair kind (rows), shares within each kind."""
    lines = ["Categories per ground-truth pair kind (sharded_data.pair_stats; share of the kind's pairs):", "",
             "| pair kind | pairs | " + " | ".join(LABELS[c] for c in CATEGORIES) + " |",
             "|---|---:|" + "---:|" * len(CATEGORIES)]
    for kind in KINDS:
        if kind in ("hidden_twin", "one_sign_apart") and not by_kind["has_gloss"]:
            row = ["n/a (no glosses)"] * len(CATEGORIES)
            count = "n/a"
        elif kind == "same_signer" and not by_kind["has_signer"]:
            row, count = ["n/a (no signers)"] * len(CATEGORIES), "n/a"
        else:
            row = [f"{by_kind[kind]['shares'][c]:.1%}" if by_kind[kind]["pairs"] else "-" for c in CATEGORIES]
            count = str(by_kind[kind]["pairs"])
        label = KIND_LABELS[kind] + (" (same sentence: not negatives)" if kind == "exact_twin" else "")
        lines.append(f"| {label} | {count} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_all(summary: dict, arrays: dict, out: Path, num_epochs: int, examples: int = 6, seed: int = 0) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    epochs, sims, category = summary["reference_epochs"], arrays["sims"], arrays["category"]
    fig, axes = plt.subplots(1, len(CATEGORIES), figsize=(4 * len(CATEGORIES), 3.4), sharey=True)
    for ax, (index, name) in zip(axes, enumerate(CATEGORIES)):
        members = np.flatnonzero(category == index)
        for pair in rng.choice(members, size=min(examples, len(members)), replace=False) if len(members) else []:
            ax.plot(epochs, sims[:, pair], marker="o", alpha=0.7)
        for y in (summary["thresholds"]["high"], summary["thresholds"]["low"]):
            ax.axhline(y, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{LABELS[name]} ({summary['shares'][name]:.1%})")
        ax.set_xlabel("reference epoch")
    axes[0].set_ylabel("similarity")
    fig.tight_layout()
    paths = [out / "trajectory_examples.png"]
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    values = np.concatenate([arrays["delta"], arrays["same_delta"]])
    bins = np.linspace(values.min(), values.max(), 60) if len(values) and values.min() < values.max() else 60
    ax.hist(arrays["delta"], bins=bins, density=True, alpha=0.6, label=f"negative pairs ({len(arrays['delta'])})")
    if len(arrays["same_delta"]):
        ax.hist(arrays["same_delta"], bins=bins, density=True, alpha=0.6, color="tab:red",
                label=f"same-sentence pairs ({len(arrays['same_delta'])}, excluded)")
    ax.set_xlabel("delta = s_last - s_first")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "delta_histogram.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in SCHEDULES:
        schedule = CurriculumSchedule(name)
        ax.plot(range(num_epochs), [schedule.alpha_at_epoch(e, num_epochs) for e in range(num_epochs)], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("alpha (0 = easiest, 1 = hardest)")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "curriculum_schedules.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def training_ground_truth(run: Path, data: Path | None) -> list[PairSample] | None:
    """The ground truth of the run's training split, or None (said on the console) when its shards are not
    at hand: `--data` given, else the `data` of RUN/config.json."""
    if data is None:
        config = run / "config.json"
        recorded = json.loads(config.read_text()).get("data") if config.is_file() else None
        if not recorded or not Path(recorded).is_dir():
            print(f"(no categories per pair kind: {run} names no shard directory that exists here "
                  f"({recorded!r}); pass --data DIR)")
            return None
        data = Path(recorded)
    return load_pair_samples(data, "train")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="reference run directory (holds trajectories/ref-*.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the table and plots")
    parser.add_argument("--high", type=float, default=0.5, help="similarity at or above which a pair is high")
    parser.add_argument("--low", type=float, default=0.3, help="similarity at or below which a pair is low")
    parser.add_argument("--relative", action="store_true", help="read --high/--low as quantiles of all similarities")
    parser.add_argument("--max-pairs", type=int, default=200_000, help="sample this many pairs when N(N-1) is larger")
    parser.add_argument("--num-epochs", type=int, default=40, help="epochs shown on the schedule plot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="the run's shard directory, for the categories per ground-truth pair "
                                                  "kind (default: the run's config.json `data`)")
    args = parser.parse_args(argv)

    trajectory = load_trajectory(args.run, load_tokens=False)
    samples = training_ground_truth(args.run, args.data)
    summary, arrays = analyze(trajectory, args.high, args.low, args.relative, args.max_pairs, args.seed, samples)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trajectory_categories.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table(summary)
    (args.out / "trajectory_categories.md").write_text(table)
    plot_all(summary, arrays, args.out, args.num_epochs, seed=args.seed)
    print(table, end="")
    return summary


if __name__ == "__main__":
    main()
