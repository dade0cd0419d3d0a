"""Pair statistics of the synthetic presets next to a real corpus's: the table of README "The synthetic corpus".

    python benchmarks/corpus_stats.py [--phoenix-tsv TRAIN_TSV] [--presets tiny csl-like ...] [--json OUT.json]

Each preset's training split is planned (no video is rendered: the statistics need only the texts, glosses
and signers) and measured with `sharded_data.pair_stats`, the code behind `python -m sharded_data.inspect
DIR --pairs`. `--phoenix-tsv` adds a column for real PHOENIX-2014T translations (a TSV with a `text`
column, e.g. the research copy under shared/data/phoenix14t/train.tsv; it has no glosses or signers, so
those rows say n/a). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from sharded_data.pair_stats import PairSample, format_table, pair_statistics
from sharded_data.synth import PRESETS, pair_samples, plan_corpus

STUDY_PRESETS = ["tiny", "csl-like", "phoenix-like", "dense-neighbours"]


def tsv_samples(path: Path) -> list[PairSample]:
    """Texts (and signers, if the TSV has a `signer` column) of a TSV with a header row."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "text" not in rows[0]:
        raise SystemExit(f"{path}: expected a tab-separated file with a header row naming a `text` column")
    return [PairSample(row["text"], row.get("signer")) for row in rows]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phoenix-tsv", type=Path, help="real PHOENIX-2014T training translations (TSV, `text` column)")
    parser.add_argument("--presets", nargs="+", default=STUDY_PRESETS, choices=list(PRESETS))
    parser.add_argument("--json", type=Path, help="also write every statistic here")
    args = parser.parse_args(argv)

    columns = {}
    if args.phoenix_tsv:
        columns["PHOENIX-2014T (real)"] = pair_statistics(tsv_samples(args.phoenix_tsv))
    for name in args.presets:
        started = time.perf_counter()
        columns[f"`{name}`"] = pair_statistics(pair_samples(plan_corpus(PRESETS[name]).splits["train"]))
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(format_table(columns))
    if args.json:
        args.json.write_text(json.dumps(columns, indent=1) + "\n")
    return columns


if __name__ == "__main__":
    main()
