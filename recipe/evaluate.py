"""Translation evaluation: beam search on a shard split, hypotheses gathered by sample id, scored once.

Every rank translates its share of the split (each sample exactly once across ranks; padding entries
that equalise the batch counts are dropped by sample id), rank 0 scores the whole set with sacreBLEU /
ROUGE-L / chrF (`recipe.metrics`) and writes the report: JSON, a markdown table and the hypotheses.

Also a command, to score an exported model the same way:

    python -m recipe.evaluate --model HF_DIR --data SHARDS --split test --out REPORT_DIR [--num-beams 5]

The model loads from a local directory only (see recipe.translate.load_local_model); every sample of the
split is scored or the evaluation fails (sharded_data.reader.make_eval_loader).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recipe.device import default_device, frames_to_device
from recipe.metrics import TranslationScores, score_translations
from recipe.run_dir import write_json_atomic, write_text_atomic
from sharded_data.reader import ReaderConfig, make_eval_loader


@dataclass
class TranslationRow:
    sample_id: int
    hypothesis: str
    reference: str


@torch.no_grad()
def translate_split(model: Any, tokenizer: Any, data: str, split: str, batch_size: int, reader: ReaderConfig,
                    rank: int = 0, world_size: int = 1, num_beams: int = 5, max_new_tokens: int = 60,
                    synced_gpus: bool = False, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> list[TranslationRow]:
    """Translate every sample of a split; every rank returns the gathered rows ordered by sample id.

    `synced_gpus` must be True under ZeRO-3 with several ranks: each rank keeps stepping the decoder
    until all are done, because every forward there is a collective (otherwise ranks hang).
    """
    was_training = model.training
    model.eval()
    rows: list[TranslationRow] = []
    for batch in make_eval_loader(data, split, batch_size, rank, world_size, reader):
        generated = model.generate(frames=frames_to_device(batch["frames"], device, dtype),
                                   frame_mask=batch["frame_mask"].to(device), num_beams=num_beams,
                                   max_new_tokens=max_new_tokens, synced_gpus=synced_gpus)
        hypotheses = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for sample_id, hypothesis, reference, valid in zip(batch["sample_ids"].tolist(), hypotheses,
                                                           batch["texts"], batch["valid"].tolist()):
            if valid:
                rows.append(TranslationRow(sample_id, hypothesis.strip(), reference))
    model.train(was_training)
    if world_size > 1:
        gathered: list[list[TranslationRow]] = [[] for _ in range(world_size)]
        dist.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    unique = {row.sample_id: row for row in rows}
    return [unique[sample_id] for sample_id in sorted(unique)]


def score_rows(rows: list[TranslationRow], bleu_tokenize: str = "13a") -> TranslationScores:
    return score_translations([r.hypothesis for r in rows], [r.reference for r in rows], bleu_tokenize=bleu_tokenize)


def write_report(out_dir: str | Path, name: str, scores: TranslationScores, rows: list[TranslationRow],
                 context: dict | None = None) -> Path:
    """`name`.json (scores + context), `name`.md (a table), `name`.hyp.tsv (sample id, hypothesis, reference)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{name}.json", {**scores.as_dict(), **(context or {})})
    table = (
        f"| split | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | chrF | sentences |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        f"| {name} | {scores.bleu1:.2f} | {scores.bleu2:.2f} | {scores.bleu3:.2f} | {scores.bleu4:.2f} | "
        f"{scores.rouge_l:.2f} | {scores.chrf:.2f} | {scores.num_sentences} |\n\n"
        f"sacreBLEU signature: `{scores.bleu_signature}`; chrF: `{scores.chrf_signature}`\n"
    )
    write_text_atomic(out_dir / f"{name}.md", table)
    lines = ["sample_id\thypothesis\treference"] + [f"{r.sample_id}\t{r.hypothesis}\t{r.reference}" for r in rows]
    write_text_atomic(out_dir / f"{name}.hyp.tsv", "\n".join(lines) + "\n")
    return out_dir / f"{name}.json"


def main(argv: list[str] | None = None) -> dict:
    from recipe.tokenizer import load_tokenizer
    from recipe.translate import load_local_model

    parser = argparse.ArgumentParser(description="Score an exported model on a shard split (BLEU-1..4, ROUGE-L, chrF).")
    parser.add_argument("--model", required=True, help="Hugging Face directory from recipe.convert_to_hf")
    parser.add_argument("--data", required=True, help="shard directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=0,
                        help="frames kept per video; default: the most the model's visual positions allow")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--bleu-tokenize", default="13a")
    args = parser.parse_args(argv)
    device = default_device()
    try:
        model = load_local_model(args.model).to(device)
    except FileNotFoundError as error:
        parser.exit(1, f"error: {error}\n")
    tokenizer = load_tokenizer(args.model)
    reader = ReaderConfig(frame_size=model.config.frame_size, max_frames=args.max_frames or model.max_frames,
                          num_workers=args.num_workers, output="uint8", pin_memory=device.type == "cuda")
    rows = translate_split(model, tokenizer, args.data, args.split, args.batch_size, reader,
                           num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, device=device)
    scores = score_rows(rows, args.bleu_tokenize)
    write_report(args.out, args.split, scores, rows, {"model": str(args.model), "num_beams": args.num_beams})
    print(json.dumps(scores.as_dict(), indent=1))
    return scores.as_dict()


if __name__ == "__main__":
    main()
