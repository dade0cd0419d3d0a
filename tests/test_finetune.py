"""End-to-end tests of stage-2 finetuning (`recipe.finetune`) and of its evaluation (`recipe.evaluate`).

A real finetuning run starts from the session's translating pretraining run (in this process, `main(argv)`):
it continues from the pretrained weights and writes the reports, whose hypotheses are real, input-dependent
text equal to `tokenizer.decode(model.generate(...))` on the saved weights. Under ZeRO-3 on two ranks the
ranks decode for different numbers of steps, so the evaluation only finishes if generation runs in lockstep.
A pretraining run whose weights do not fit its model_config is refused by key name before training. The
distributed evaluation gathers every sample exactly once: the scores on two ranks equal sacreBLEU on the
whole set computed on one.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sacrebleu
import torch

from tests.conftest import (DS_CONFIGS, copy_run, generate_and_decode, launch, losses, read_metrics, run_main,
                            train_args, trained_model)
from tests.distributed import run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 16  # 1 rank x 4 samples: 8 steps per epoch, 2 epochs
NUM_BEAMS, MAX_NEW_TOKENS = 2, 40  # room for the longest sentence (~30 tokens): generation ends on </s>
EVAL_ARGS = ["--num-beams", str(NUM_BEAMS), "--max-new-tokens", str(MAX_NEW_TOKENS)]
# Finetuning the translating run gently: a fresh AdamW at 1e-3 moves every weight by ~1e-3 a step, which was
# seen to knock the tiny network back to one sentence for every clip within 4 steps.
FINETUNE_LR = ["--lr", "1e-4"]


@pytest.fixture(scope="module")
def finetuned_run(translating_run, shards, tmp_path_factory):
    from recipe import finetune

    out = tmp_path_factory.mktemp("finetune") / "ft"
    argv = train_args(shards, out, "--init", str(translating_run), "--max-steps", str(STEPS), "--save-every", "8",
                      "--eval-every", "8", *FINETUNE_LR, *EVAL_ARGS)
    metrics = run_main(finetune.main, argv)
    return out, metrics


def _translation_losses(run: Path) -> list[float]:
    metrics = read_metrics(run)
    return [metrics[step]["translation_loss"] for step in sorted(metrics)]


def test_finetuning_continues_from_the_pretraining_run(finetuned_run, translating_run):
    """Broken variant tried: `load_pretrained` returning the freshly initialised model without loading the
    checkpoint: the first finetuning loss is then ~4.3 (an untrained network's), not the pretraining's ~1.5."""
    run, _ = finetuned_run
    curve = losses(run)
    assert len(curve) == STEPS
    pretrained = _translation_losses(translating_run)
    untrained, trained = pretrained[0], sum(pretrained[-8:]) / 8
    assert untrained - trained > 1.0, f"the pretraining run did not learn to translate: {pretrained}"
    # The same loss (label-smoothed cross-entropy on the same targets) on the same weights: the finetuning starts
    # where the pretraining's translation loss ended, and stays there (lr 1e-4, 16 steps).
    assert abs(sum(curve[:4]) / 4 - trained) < 0.25, (curve, trained)
    assert max(curve) < trained + 0.5 < untrained, (curve, trained)
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(translating_run)
    # The finetuning run keeps the pretraining run's tokenizer and network.
    tokenizer_file = Path("tokenizer") / "tokenizer.json"
    assert (run / tokenizer_file).read_text() == (translating_run / tokenizer_file).read_text()
    pretrained_config = json.loads((translating_run / "model_config" / "config.json").read_text())
    finetuned = json.loads((run / "model_config" / "config.json").read_text())
    for key in ("d_model", "decoder_layers", "frame_size", "vocab_size"):
        assert finetuned[key] == pretrained_config[key], key


def assert_real_translations(rows: list[dict], split: str) -> None:
    """Text for every clip, and not the same text for all: the network reads the video."""
    hypotheses = [row["hypothesis"] for row in rows]
    assert all(hypotheses), f"{split}: empty hypotheses {hypotheses}"
    assert len(set(hypotheses)) >= 2, f"{split}: the same translation for every clip {hypotheses}"


def assert_hypotheses_are_generate(rows: list[dict], expected: list[dict], split: str) -> None:
    """The report's rows are `tokenizer.decode(model.generate(...))` on the checkpoint's weights, sample by sample."""
    expected = sorted(expected, key=lambda row: row["sample_id"])
    assert [int(row["sample_id"]) for row in rows] == [row["sample_id"] for row in expected], split
    assert [row["hypothesis"] for row in rows] == [row["hypothesis"] for row in expected], split


def test_finetuning_writes_reports_and_best_checkpoint(finetuned_run, shards):
    """Broken variant tried: `translate_split` without `model.eval()` (dropout on while generating): the
    report's hypotheses no longer equal decode(generate) on the saved weights."""
    from recipe.tokenizer import load_tokenizer
    from sharded_data.format import load_index

    run, final_metrics = finetuned_run
    reports = run / "reports"
    for name in ("dev-step000008", "dev", "test"):
        for suffix in (".json", ".md", ".hyp.tsv"):
            assert (reports / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    tokenizer = load_tokenizer(run / "tokenizer")
    for name, split, step in (("dev-step000008", "dev", 8), ("dev", "dev", STEPS), ("test", "test", STEPS)):
        rows = _read_hypotheses(reports / f"{name}.hyp.tsv")
        index = load_index(str(shards), split)
        assert [int(r["sample_id"]) for r in rows] == list(range(index.num_samples))
        assert [r["reference"] for r in rows] == list(index.text)
        assert_real_translations(rows, name)
        model = trained_model(run, f"step-{step:06d}")
        expected = generate_and_decode(model, tokenizer, shards, split, 4, num_beams=NUM_BEAMS,
                                       max_new_tokens=MAX_NEW_TOKENS)
        assert_hypotheses_are_generate(rows, expected, name)
        report = json.loads((reports / f"{name}.json").read_text())
        score = sacrebleu.corpus_bleu([r["hypothesis"] for r in rows], [list(index.text)], tokenize="13a")
        assert report["bleu4"] == pytest.approx(score.score)
        assert report["bleu1"] > 0 and report["chrf"] > 0  # real words of the references, not just any text
        assert report["num_beams"] == NUM_BEAMS and report["step"] == step
    assert final_metrics["test_bleu4"] == pytest.approx(json.loads((reports / "test.json").read_text())["bleu4"])
    assert "BLEU-4" in (reports / "test.md").read_text()
    best = json.loads((run / "best.json").read_text())
    dev_scores = {8: json.loads((reports / "dev-step000008.json").read_text())["bleu4"],
                  STEPS: json.loads((reports / "dev.json").read_text())["bleu4"]}
    # the first evaluation to reach the best score wins (a later equal one is no improvement)
    assert best["step"] == min(step for step, score in dev_scores.items() if score == max(dev_scores.values()))
    assert best["dev_bleu4"] == max(dev_scores.values())
    assert (run / "checkpoints" / f"step-{best['step']:06d}" / "complete.json").is_file()
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert evals, "no evaluation record in metrics.jsonl"
    assert sorted(read_metrics(run)) == list(range(1, STEPS + 1))


def _read_hypotheses(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def zero3_partitioning_every_parameter(folder: Path) -> Path:
    """ds_configs/zero3.json with stage3_param_persistence_threshold 0. DeepSpeed keeps a parameter of fewer
    than 100k elements whole on every rank (the default threshold), and every parameter of the tiny network is
    that small: with the shipped file no forward gathers anything, and ZeRO-3's lockstep requirement does not
    exist. With 0, every parameter is sharded as a large model's are, and every forward is a collective."""
    from recipe.ds_config import load_ds_config

    config = load_ds_config(DS_CONFIGS / "zero3.json")
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / "zero3-every-parameter-sharded.json"
    path.write_text(json.dumps(config, indent=1))
    return path


@pytest.mark.slow
def test_two_rank_zero3_finetuning_generates_in_lockstep(translating_run, shards, tmp_path):
    """ZeRO-3 on two ranks with every parameter sharded: every forward gathers the weights (a collective), and
    the two ranks' batches end their translations after different numbers of steps, so generation must step
    in lockstep (synced_gpus). The gathered report holds the whole split once, scored by sacreBLEU on the
    whole split, and its hypotheses are decode(generate) of the saved weights on each rank's batches.

    Broken variant tried: `synced_gpus=False` in `FinetuningTask.translate`: the rank that finishes first
    leaves generation while the other still gathers weights, and the run fails (a garbage allocation from
    mismatched collectives). With the shipped zero3.json that variant passed: the tiny network's parameters
    were never sharded; hence the config above. This test also found that rank 1 translated with its own
    BatchNorm statistics, not the saved ones (fixed: `recipe.dist.broadcast_buffers` in the training loop).
    """
    from recipe.tokenizer import load_tokenizer
    from sharded_data.format import load_index

    run = tmp_path / "ft-zero3"
    micro_batch = 2  # evaluation batches of 2: several batches per rank, each ending at its own length
    ds_config = str(zero3_partitioning_every_parameter(tmp_path))
    launch("finetune.py", train_args(shards, run, "--init", str(translating_run), "--max-steps", "4", "--save-every",
                                     "4", *FINETUNE_LR, *EVAL_ARGS, ds_config=ds_config, micro_batch=micro_batch),
           launcher="torchrun")
    assert json.loads((run / "checkpoints" / "step-000004" / "complete.json").read_text())["zero_stage"] == 3
    model, tokenizer = trained_model(run, "step-000004"), load_tokenizer(run / "tokenizer")
    lengths_differ = False
    for split in ("dev", "test"):
        rows = _read_hypotheses(run / "reports" / f"{split}.hyp.tsv")
        index = load_index(str(shards), split)
        assert [int(r["sample_id"]) for r in rows] == list(range(index.num_samples))
        assert [r["reference"] for r in rows] == list(index.text)
        report = json.loads((run / "reports" / f"{split}.json").read_text())
        expected = sacrebleu.corpus_bleu([r["hypothesis"] for r in rows], [list(index.text)], tokenize="13a")
        assert report["bleu4"] == pytest.approx(expected.score) and report["num_sentences"] == index.num_samples
        assert_real_translations(rows, split)
        per_rank = [generate_and_decode(model, tokenizer, shards, split, micro_batch, rank, 2, num_beams=NUM_BEAMS,
                                        max_new_tokens=MAX_NEW_TOKENS) for rank in (0, 1)]
        assert_hypotheses_are_generate(rows, per_rank[0] + per_rank[1], split)
        steps = [{row["batch"]: row["steps"] for row in rank_rows} for rank_rows in per_rank]
        assert steps[0].keys() == steps[1].keys()  # the same number of batches on both ranks
        lengths_differ |= any(steps[0][batch] != steps[1][batch] for batch in steps[0])
    assert lengths_differ, "both ranks decoded for the same number of steps in every batch: lockstep untested"


@pytest.mark.parametrize("layers, kind", [(3, "missing"), (1, "unexpected")])
def test_init_run_whose_weights_do_not_fit_is_refused_by_key(layers, kind, reference_run, shards, tmp_path,
                                                            monkeypatch):
    import deepspeed

    from recipe import finetune

    monkeypatch.setattr(deepspeed, "initialize", lambda *a, **k: pytest.fail("training started"))
    init = copy_run(reference_run, tmp_path / "pretrained")
    config_file = init / "model_config" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"decoder_layers": layers}))
    out = tmp_path / "ft"
    with pytest.raises(KeyError) as error:
        run_main(finetune.main, train_args(shards, out, "--init", str(init), "--max-steps", "2", *EVAL_ARGS))
    message = str(error.value)
    assert f"{kind} ['" in message and "decoder.layers." in message, message  # a non-empty list of key names
    assert str(init) in message
    assert not (out / "metrics.jsonl").exists()


# --- distributed evaluation: every sample once, whatever the rank split -------------------------------------

def _fingerprint(frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[int, int]:
    """A key for one clip that does not depend on how it was batched (time padding is masked out)."""
    return int(frame_mask.sum()), int(round(frames[0].double().sum().item() * 100))


class OracleModel(torch.nn.Module):
    """A stand-in translator that knows the references: exact for even sample ids, cut short for odd ones.

    Its output depends only on the clip (looked up by fingerprint), never on the batch or the rank, so
    any sample lost, duplicated or mismatched in the gathering changes the scores.
    """

    def __init__(self, answers: dict[tuple[int, int], list[int]], pad_id: int) -> None:
        super().__init__()
        self.answers, self.pad_id = answers, pad_id

    def generate(self, frames, frame_mask, num_beams, max_new_tokens, synced_gpus):
        outputs = [self.answers[_fingerprint(f, m)] for f, m in zip(frames, frame_mask)]
        width = max(len(ids) for ids in outputs)
        return torch.tensor([ids + [self.pad_id] * (width - len(ids)) for ids in outputs])


def _oracle(shards: str, tokenizer_dir: str, reader) -> OracleModel:
    from recipe.tokenizer import load_tokenizer
    from sharded_data.reader import make_eval_loader

    tokenizer = load_tokenizer(tokenizer_dir)
    answers = {}
    for batch in make_eval_loader(shards, "test", 1, 0, 1, reader):
        ids = tokenizer(batch["texts"][0], add_special_tokens=False)["input_ids"]
        key = _fingerprint(batch["frames"][0], batch["frame_mask"][0])
        assert key not in answers, "two test clips share a fingerprint"
        answers[key] = ids if int(batch["sample_ids"][0]) % 2 == 0 else ids[: max(1, len(ids) // 2)]
    return OracleModel(answers, tokenizer.pad_token_id)


def _translate_on_rank(rank: int, world_size: int, shards: str, tokenizer_dir: str, reader):
    from recipe.evaluate import score_rows, translate_split
    from recipe.tokenizer import load_tokenizer

    model = _oracle(shards, tokenizer_dir, reader)
    rows = translate_split(model, load_tokenizer(tokenizer_dir), shards, "test", 3, reader, rank, world_size,
                           num_beams=2, max_new_tokens=12)
    return rows, score_rows(rows).as_dict()


def test_distributed_scores_equal_sacrebleu_on_the_whole_set(reference_run, shards):
    from sharded_data.format import load_index
    from sharded_data.reader import ReaderConfig

    reader = ReaderConfig(frame_size=16, max_frames=16, num_workers=0)
    tokenizer_dir = str(reference_run / "tokenizer")
    single_rows, single_scores = _translate_on_rank(0, 1, str(shards), tokenizer_dir, reader)
    per_rank = run_on_ranks(_translate_on_rank, world_size=2, args=(str(shards), tokenizer_dir, reader))

    index = load_index(str(shards), "test")
    assert index.num_samples % (2 * 3) != 0  # uneven split: padding entries must be dropped
    assert [row.sample_id for row in single_rows] == list(range(index.num_samples))
    assert [row.reference for row in single_rows] == list(index.text)
    for rows, scores in per_rank:  # every rank ends with the whole set
        assert rows == single_rows
        assert scores == single_scores
    hypotheses = [row.hypothesis for row in single_rows]
    assert hypotheses[0] == index.text[0] and hypotheses[1] != index.text[1]
    expected = sacrebleu.corpus_bleu(hypotheses, [list(index.text)], tokenize="13a").score
    assert single_scores["bleu4"] == pytest.approx(expected)
    assert 20.0 < expected < 100.0


# --- BatchNorm statistics agree across ranks before evaluation ---------------------------------------------------

def _batchnorm_after_training_on_own_batches(rank: int, world_size: int):
    from recipe.dist import broadcast_buffers

    norm = torch.nn.BatchNorm1d(3)
    norm(torch.randn(8, 3, generator=torch.Generator().manual_seed(rank)) * (rank + 1))  # train mode: updates stats
    own = [buffer.clone() for buffer in norm.buffers()]
    broadcast_buffers(norm)
    return own, [buffer.clone() for buffer in norm.buffers()]


def test_ranks_share_rank0s_batchnorm_statistics_before_evaluating():
    """What the ZeRO-3 test above found: each rank's BatchNorm running statistics follow its own batches, so
    two ranks translated with two different networks and the checkpoint held rank 0's. `run_training` now
    broadcasts rank 0's buffers before evaluating, recording trajectories and saving (DDP's behaviour).
    Broken variant tried: `broadcast_buffers` as a no-op: rank 1 keeps its own statistics."""
    (own0, after0), (own1, after1) = run_on_ranks(_batchnorm_after_training_on_own_batches, world_size=2)
    assert not torch.equal(own0[0], own1[0])  # the ranks did drift apart
    for rank0, rank1, before in zip(after0, after1, own0, strict=True):
        assert torch.equal(rank0, before) and torch.equal(rank1, before)
