"""Ground truth for every pair of samples, and the pair statistics of a corpus (`inspect DIR --pairs`).

What a contrastive model finds "similar" in a negative pair, and so what Pair Selection selects, depends on
how the corpus's pairs relate. Each pair of two different samples is one kind, checked in this order:

    exact twin      the same sentence (normalised text): never a negative in our loss
    hidden twin     the same gloss sequence (the same signs), a different text: a paraphrase, a false
                    negative that no text comparison can see
    one sign apart  gloss sequences one substitution, insertion or deletion apart
    same signer     none of the above, signed by the same person (same clothes, background, build)
    unrelated       everything else

Glosses come from the corpus when it has them (the synthetic corpus's signs, PHOENIX-2014T's `orth`);
without them the gloss rows say n/a. `pair_statistics` samples random pairs and random batches of 16 (the
paper's batch size) with a fixed seed, so the same corpus always gives the same table.
"""
from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharded_data.format import corpus_path, load_index, normalize_text

KINDS = ("exact_twin", "hidden_twin", "one_sign_apart", "same_signer", "unrelated")
KIND_LABELS = {
    "exact_twin": "exact twin (same text)",
    "hidden_twin": "hidden twin (same glosses, other text)",
    "one_sign_apart": "one sign apart",
    "same_signer": "same signer (otherwise unrelated)",
    "unrelated": "unrelated",
}
UNKNOWN_SIGNERS = ("", "unknown")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class PairSample:
    """What the pair kinds need to know about one sample."""

    text: str
    signer: str | None = None  # None: unknown
    gloss: tuple[str, ...] | None = None  # None: the corpus has no gloss annotation
    meaning_id: int | None = None


def within_one_edit(a: tuple, b: tuple) -> bool:
    """True when two different sequences are one substitution, insertion or deletion apart."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = (a, b) if len(a) < len(b) else (b, a)
    for i in range(len(short)):
        if short[i] != long[i]:
            return short[i:] == long[i + 1:]
    return True  # the longer one has one extra sign at the end


class PairKinds:
    """Classifies pairs of samples by index, with integer ids per distinct text and gloss sequence."""

    def __init__(self, samples: list[PairSample]):
        self.samples = samples
        self.text_id = _ids([normalize_text(s.text) for s in samples])
        self.has_gloss = all(s.gloss is not None for s in samples) and bool(samples)
        self.gloss_id = _ids([s.gloss for s in samples]) if self.has_gloss else None
        self.glosses = list(dict.fromkeys(s.gloss for s in samples)) if self.has_gloss else []
        self.signer = [known_signer(s.signer) for s in samples]
        self.has_signer = any(signer is not None for signer in self.signer)
        self._near: dict[tuple[int, int], bool] = {}

    def same_signer(self, i: int, j: int) -> bool:
        return self.signer[i] is not None and self.signer[i] == self.signer[j]

    def one_sign_apart(self, i: int, j: int) -> bool:
        a, b = self.gloss_id[i], self.gloss_id[j]
        key = (a, b) if a < b else (b, a)
        if key not in self._near:
            self._near[key] = within_one_edit(self.glosses[a], self.glosses[b])
        return self._near[key]

    def kind(self, i: int, j: int) -> str:
        if self.text_id[i] == self.text_id[j]:
            return "exact_twin"
        if self.has_gloss:
            if self.gloss_id[i] == self.gloss_id[j]:
                return "hidden_twin"
            if self.one_sign_apart(i, j):
                return "one_sign_apart"
        if self.same_signer(i, j):
            return "same_signer"
        return "unrelated"


def known_signer(signer: str | None) -> str | None:
    """The signer, or None where the corpus does not say (no column, 'unknown')."""
    return None if signer is None or signer.strip() in UNKNOWN_SIGNERS else signer


def _ids(values: list) -> list[int]:
    """An integer id per distinct value, in order of first appearance (no hashing order involved)."""
    first: dict = {}
    return [first.setdefault(value, len(first)) for value in values]


def text_unit(texts: list[str]) -> str:
    """'characters' for a corpus whose texts are mostly Chinese/Japanese (no spaces between words), else 'words'."""
    cjk = sum(1 for text in texts if _CJK.search(text))
    return "characters" if texts and cjk > len(texts) / 2 else "words"


def tokens(text: str, unit: str) -> frozenset:
    normal = normalize_text(text)
    return frozenset(normal.replace(" ", "")) if unit == "characters" else frozenset(normal.split())


def jaccard(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def random_pairs(n: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of n samples when there are at most max_pairs of them, else a uniform sample
    (with replacement) of pairs of two different samples."""
    if n * (n - 1) // 2 <= max_pairs:
        first, second = np.triu_indices(n, k=1)
        return first, second
    first = rng.integers(0, n, size=max_pairs)
    second = (first + rng.integers(1, n, size=max_pairs)) % n  # never the same sample
    return first, second


def pair_statistics(samples: list[PairSample], max_pairs: int = 200_000, batches: int = 4000,
                    batch_size: int = 16, seed: int = 0, unit: str = "auto") -> dict:
    """The corpus's pair statistics (see the module docstring); None where the corpus lacks the annotation."""
    if len(samples) < 2:
        raise ValueError(f"pair statistics need at least 2 samples, got {len(samples)}")
    rng = np.random.default_rng(seed)
    kinds = PairKinds(samples)
    unit = text_unit([s.text for s in samples]) if unit == "auto" else unit
    words = [tokens(s.text, unit) for s in samples]

    first, second = random_pairs(len(samples), max_pairs, rng)
    first, second = first.tolist(), second.tolist()
    pair_kind = [kinds.kind(i, j) for i, j in zip(first, second)]
    kind_counts = Counter(pair_kind)
    different = [(i, j) for i, j, k in zip(first, second, pair_kind) if k != "exact_twin"]
    text_overlap = np.array([jaccard(words[i], words[j]) for i, j in different]) if different else np.zeros(0)
    gloss_overlap = None
    if kinds.has_gloss and different:
        gloss_sets = [frozenset(s.gloss) for s in samples]
        gloss_overlap = float(np.mean([jaccard(gloss_sets[i], gloss_sets[j]) for i, j in different]))
    same_signer = None
    if kinds.has_signer:
        same_signer = float(np.mean([kinds.same_signer(i, j) for i, j in zip(first, second)]))

    per_text = np.bincount(np.asarray(kinds.text_id))
    counts = Counter(per_text.tolist())
    signers = Counter(signer for signer in kinds.signer if signer is not None)
    stats = dict(
        samples=len(samples),
        sentences=int(len(per_text)),
        text_unit=unit,
        pairs=len(pair_kind),
        pairs_sampled=bool(len(pair_kind) < len(samples) * (len(samples) - 1) // 2),
        text_jaccard_mean=_float(text_overlap.mean()) if len(text_overlap) else None,
        text_jaccard_p95=_float(np.quantile(text_overlap, 0.95)) if len(text_overlap) else None,
        text_jaccard_ge_half=_float((text_overlap >= 0.5).mean()) if len(text_overlap) else None,
        gloss_jaccard_mean=gloss_overlap,
        pair_share={kind: kind_counts.get(kind, 0) / len(pair_kind) for kind in KINDS},
        same_signer_share=same_signer,
        samples_per_sentence=dict(mode=int(max(counts, key=lambda c: (counts[c], -c))), min=int(per_text.min()),
                                  median=float(np.median(per_text)), max=int(per_text.max())),
        signers=len(signers) if signers else None,
        largest_signer_share=(max(signers.values()) / len(samples)) if signers else None,
        has_gloss=kinds.has_gloss,
    )
    if kinds.has_gloss:
        meanings = [s.meaning_id for s in samples]
        stats["meanings"] = len(dict.fromkeys(meanings)) if all(m is not None for m in meanings) else None
    stats.update(batch_statistics(kinds, batches, batch_size, rng))
    return stats


def batch_statistics(kinds: PairKinds, batches: int, batch_size: int, rng: np.random.Generator) -> dict:
    """Shares of random batches (without replacement) holding at least one pair of each kind, and the mean
    share of a batch's members that have a hidden twin or a one-sign-apart neighbour in the batch."""
    n = len(kinds.samples)
    if n < batch_size:
        return dict(batch_size=batch_size, batches=0, batch_holding=None, batch_neighbour_members=None)
    holding = Counter()
    neighbour_members = 0.0
    for _ in range(batches):
        members = rng.choice(n, batch_size, replace=False).tolist()
        found: dict[str, None] = {}
        has_neighbour = np.zeros(batch_size, dtype=bool)
        for a in range(batch_size):
            for b in range(a + 1, batch_size):
                kind = kinds.kind(members[a], members[b])
                found[kind] = None
                if kind in ("hidden_twin", "one_sign_apart"):
                    has_neighbour[a] = has_neighbour[b] = True
        holding.update(list(found))
        neighbour_members += has_neighbour.mean()
    return dict(
        batch_size=batch_size,
        batches=batches,
        batch_holding={kind: holding.get(kind, 0) / batches for kind in KINDS},
        batch_neighbour_members=(neighbour_members / batches) if kinds.has_gloss else None,
    )


def _float(value) -> float:
    return float(value)


# ------------------------------------------------------------------------------------------ reading


def load_pair_samples(shard_dir: str | Path, split: str) -> list[PairSample]:
    """The split's samples with their ground truth: text and signer from the index; glosses and meaning ids
    from corpus.json (the synthetic corpus records them there) or else from each sample's json member."""
    index = load_index(shard_dir, split)
    gloss, meaning = _ground_truth_from_corpus(shard_dir, split, index.num_samples)
    if gloss is None:
        gloss, meaning = _ground_truth_from_members(shard_dir, split, index)
    return [
        PairSample(text=text, signer=known_signer(signer),
                   gloss=tuple(gloss[i].split()) if gloss is not None and gloss[i] is not None else None,
                   meaning_id=meaning[i] if meaning is not None else None)
        for i, (text, signer) in enumerate(zip(index.text, index.signer))
    ]


def _ground_truth_from_corpus(shard_dir, split: str, num_samples: int):
    path = corpus_path(shard_dir)
    if not path.is_file():
        return None, None
    truth = (json.loads(path.read_text(encoding="utf-8")).get("generator") or {}).get("ground_truth", {}).get(split)
    if not truth:
        return None, None
    gloss, meaning = truth.get("gloss"), truth.get("meaning_id")
    for name, column in (("gloss", gloss), ("meaning_id", meaning)):
        if column is not None and len(column) != num_samples:
            raise ValueError(f"{path}: generator.ground_truth.{split}.{name} has {len(column)} entries for "
                             f"{num_samples} samples; the corpus.json does not belong to these shards, rewrite them")
    return gloss, meaning


def _ground_truth_from_members(shard_dir, split: str, index):
    """Glosses from the json members (read header by header: the videos are skipped, not read)."""
    gloss: list[str | None] = [None] * index.num_samples
    meaning: list[int | None] = [None] * index.num_samples
    for info in index.shards:
        with tarfile.open(Path(shard_dir) / info.name, "r:") as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                fields = json.loads(tar.extractfile(member).read().decode("utf-8"))
                sample_id = fields.get("sample_id")
                if isinstance(sample_id, int) and 0 <= sample_id < index.num_samples:
                    gloss[sample_id] = fields.get("gloss")
                    meaning[sample_id] = fields.get("meaning_id")
    if all(g is None for g in gloss):
        return None, None
    return gloss, (meaning if all(m is not None for m in meaning) else None)


# ------------------------------------------------------------------------------------------ the table


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_rows(stats: dict) -> list[tuple[str, str]]:
    """(statistic, value) rows: the issue's table plus the pair kinds the synthetic corpus adds."""
    holding = stats["batch_holding"] or {}
    batch = stats["batch_size"]
    spread = stats["samples_per_sentence"]
    signers = "n/a" if stats["signers"] is None else (
        f"{stats['signers']}, largest {_pct(stats['largest_signer_share'], 0)}")
    gloss = stats["has_gloss"]
    share = stats["pair_share"]
    return [
        (f"text overlap of a random pair (Jaccard, {stats['text_unit']}), mean / p95",
         f"{_num(stats['text_jaccard_mean'])} / {_num(stats['text_jaccard_p95'])}"),
        ("share of pairs with text Jaccard >= 0.5", _pct(stats["text_jaccard_ge_half"], 2)),
        ("gloss overlap of a random pair, mean", _num(stats["gloss_jaccard_mean"])),
        ("exact twins (same text), share of pairs", _pct(share["exact_twin"], 2)),
        ("hidden twins (same glosses, other text), share of pairs", _pct(share["hidden_twin"], 2) if gloss else "n/a"),
        ("one sign apart, share of pairs", _pct(share["one_sign_apart"], 2) if gloss else "n/a"),
        (f"random batches of {batch} holding an exact twin", _pct(holding.get("exact_twin"))),
        (f"random batches of {batch} holding a hidden twin", _pct(holding.get("hidden_twin")) if gloss else "n/a"),
        (f"random batches of {batch} holding a one-sign-apart pair",
         _pct(holding.get("one_sign_apart")) if gloss else "n/a"),
        (f"batch members with a hidden twin or one-sign-apart neighbour in the batch",
         _pct(stats["batch_neighbour_members"])),
        ("signers", signers),
        ("samples per sentence: mostly (min-max)", f"{spread['mode']} ({spread['min']}-{spread['max']})"),
        ("same-signer share of random pairs", _pct(stats["same_signer_share"])),
        ("samples / distinct sentences", f"{stats['samples']} / {stats['sentences']}"),
    ]


def format_table(columns: dict[str, dict]) -> str:
    """A markdown table, one column per corpus (or split): `{name: pair_statistics(...)}`."""
    names = list(columns)
    rows = [table_rows(columns[name]) for name in names]
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for position, (label, _) in enumerate(rows[0]):
        lines.append(f"| {label} | " + " | ".join(column[position][1] for column in rows) + " |")
    return "\n".join(lines)
