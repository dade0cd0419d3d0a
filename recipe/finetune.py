"""Stage 2 of SCL-SLT: translation finetuning, evaluation on dev and test, best checkpoint by dev BLEU-4.

Starts from a pretraining run (`--init RUN`: its sign encoder, decoder and tokenizer, loaded through an
explicit key map with strict loading; the run's LoRA adapters are merged and fresh ones added), or builds
its model here (`--init-mbart DIR`, `--init-resnet FILE`, or from scratch: the translation-only baseline).
The visual transformer and the decoder train through LoRA when they started from pretrained mBART weights
(`--lora auto --lora-modules visual,decoder`, the defaults), fully otherwise.

Commands (the run resumes from OUT's newest checkpoint when there is one):

    python -m recipe.finetune --data shards/ --init runs/scl --out runs/ft            # CPU, one process
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 recipe/finetune.py --deepspeed_config ds_configs/zero2.json ...
    deepspeed --num_gpus 8 recipe/finetune.py --deepspeed_config ds_configs/zero3_bf16.json --preset large ...
    sbatch slurm/finetune.sh (see its header)

Writes RUN/reports/{dev,test}.{json,md,hyp.tsv} and RUN/best.json (the dev-best checkpoint tag).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `recipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from recipe.attention import choose_attn_implementation
from recipe.checkpointing import step_tag
from recipe.build import (SampledEpochs, build_model, engine_dtype, initialize_engine, is_zero3, last_checkpoint_state_dict,
                          lora_modules_for, pretrained_components, prepare_tokenizer, reader_config,
                          real_frame_count, training_dtype, video_inputs)
from recipe.config import FinetuneConfig, build_parser as config_parser, parse_config
from recipe.dist import DistEnv, init_distributed, print0, shutdown_distributed
from recipe.evaluate import score_rows, translate_split, write_report
from recipe.modeling import SignTranslationConfig, SignTranslationModel
from recipe.pair_selection import RandomBatchSampler
from recipe.run_dir import RunDir, write_json_atomic
from recipe.seeding import seed_everything
from recipe.text import tokenize_targets
from recipe.tokenizer import detect_convention
from recipe.training import planned_total_steps, run_training
from sharded_data.format import load_index

PRETRAIN_PREFIX = "model."


def broadcast_from_rank0(value: float) -> float:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]  # stage 1 wraps the translation model as `PretrainingModule.model`


def load_pretrained(init_run: str, tag: str, config: FinetuneConfig, tokenizer) -> SignTranslationModel:
    """The translation model of a pretraining run, LoRA merged, with the finetuning run's LoRA applied.

    Every checkpoint key must map onto the model and every model key must be in the checkpoint. Which
    components count as pretrained (for `--lora auto`) is read from the pretraining run's config. The special
    tokens follow `tokenizer` (the run's, which may name another target language).
    """
    model_config = SignTranslationConfig.from_pretrained(Path(init_run) / "model_config")
    model = SignTranslationModel(model_config)
    state, tag = last_checkpoint_state_dict(init_run, tag)
    foreign = sorted(key for key in state if not key.startswith(PRETRAIN_PREFIX))
    if foreign:
        raise KeyError(f"{init_run} ({tag}): keys outside the translation model {foreign[:5]}: not a pretraining run?")
    mapped = {key[len(PRETRAIN_PREFIX):]: value for key, value in state.items()}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise KeyError(f"{init_run} ({tag}) does not match its model_config: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    model.merge_lora()
    model.config.label_smoothing = config.label_smoothing
    init_config = json.loads((Path(init_run) / "config.json").read_text())
    # Runs from before --init-visual started the visual transformer at random.
    pretrained = pretrained_components(init_config.get("init_mbart", ""), init_config.get("init_visual", "random"))
    model.add_lora(lora_modules_for(config, pretrained), config.lora_r, config.lora_alpha, config.lora_dropout)
    model.use_token_convention(detect_convention(tokenizer))
    print0(f"initialised from {init_run} ({tag}): {len(mapped)} tensors; LoRA on: "
           f"{', '.join(model.config.lora_modules) or 'nothing'}")
    return model


class FinetuningTask:
    """The stage-2 `TrainingTask`: random batches, label-smoothed cross-entropy, BLEU on dev (and test)."""

    def __init__(self, config: FinetuneConfig, env: DistEnv, run: RunDir, tokenizer, frame_size: int) -> None:
        self.config, self.env, self.run, self.tokenizer = config, env, run, tokenizer
        self.reader = reader_config(config, frame_size, env.local_world_size)
        index = load_index(config.data, "train")
        self.sampler = RandomBatchSampler(index.sample_id, config.micro_batch_size * env.world_size, seed=config.seed)
        self.epochs = SampledEpochs(config, env, self.sampler, self.reader)
        self.best_bleu4, self.best_step = -1.0, None
        best = run.root / "best.json"
        if best.exists():
            record = json.loads(best.read_text())
            self.best_bleu4, self.best_step = record["dev_bleu4"], record["step"]

    def micro_batches_per_epoch(self) -> int:
        return self.epochs.micro_batches_per_epoch()

    def epoch_batches(self, epoch: int, skip: int):
        return self.epochs.epoch_batches(epoch, skip)

    def compute_loss(self, engine, batch: dict, progress: float):
        frames, frame_mask = video_inputs(batch, engine)
        labels = tokenize_targets(self.tokenizer, batch["texts"], self.config.max_text_tokens).labels.to(engine.device)
        labels = labels.masked_fill(~batch["valid"].to(engine.device)[:, None], -100)
        loss = engine(frames=frames, frame_mask=frame_mask, labels=labels, num_real_frames=real_frame_count(batch)).loss
        return loss, {}

    def after_optimizer_step(self, engine) -> dict:
        return {}

    def on_epoch_end(self, engine, epoch: int) -> None:
        pass

    def translate(self, engine, split: str):
        return translate_split(engine.module, self.tokenizer, self.config.data, split, self.config.micro_batch_size,
                               self.reader, self.env.rank, self.env.world_size, num_beams=self.config.num_beams,
                               max_new_tokens=self.config.max_new_tokens,
                               synced_gpus=is_zero3(engine) and self.env.world_size > 1,
                               device=engine.device, dtype=engine_dtype(engine))

    def evaluate(self, engine, step: int, final: bool) -> dict:
        metrics = {}
        for split in ("dev", "test") if final else ("dev",):
            rows = self.translate(engine, split)
            if self.env.rank == 0:
                scores = score_rows(rows, self.config.bleu_tokenize)
                context = {"step": step, "num_beams": self.config.num_beams}
                write_report(self.run.root / "reports", split if final else f"{split}-step{step:06d}", scores,
                             rows, context)
                metrics.update({f"{split}_{name}": value for name, value in scores.as_dict().items()
                                if isinstance(value, float)})
        # Every rank decides (from rank 0's score) so that all of them join the checkpoint save that follows.
        dev_bleu4 = broadcast_from_rank0(metrics.get("dev_bleu4", 0.0))
        if dev_bleu4 > self.best_bleu4:
            self.best_bleu4, self.best_step = dev_bleu4, step
            metrics["new_best"] = True  # the loop saves this step's checkpoint, then calls record_best
        return metrics

    def record_best(self, step: int) -> None:
        """The dev-best checkpoint of `step` exists now: best.json may name it (never before, or a kill in
        between would leave best.json pointing at a tag that does not exist)."""
        if self.env.rank == 0:
            write_json_atomic(self.run.root / "best.json", {"step": step, "dev_bleu4": self.best_bleu4})

    def pinned_tags(self) -> list[str]:
        return [step_tag(self.best_step)] if self.best_step is not None else []


def build_parser():
    """The command line of this entry point (the SLURM scripts' flags are checked against it)."""
    return config_parser(FinetuneConfig)


def main(argv: list[str] | None = None) -> dict:
    config = parse_config(FinetuneConfig, argv)
    env = init_distributed()
    seed_everything(config.seed)
    run = RunDir(Path(config.out))
    index = load_index(config.data, "train")
    tokenizer = prepare_tokenizer(config, run, index.text, source=str(RunDir(Path(config.init)).tokenizer) if config.init else "")
    if config.init:
        model = load_pretrained(config.init, config.init_tag, config, tokenizer)
        # A saved config does not keep the attention kernel: this run's precision decides (recipe.attention).
        model.set_attn_implementation(choose_attn_implementation(training_dtype(config)))
    else:
        model = build_model(config, tokenizer, label_smoothing=config.label_smoothing)
    task = FinetuningTask(config, env, run, tokenizer, frame_size=model.config.frame_size)
    total_steps = planned_total_steps(config, task.micro_batches_per_epoch())
    engine = initialize_engine(config, env, run, model, total_steps)
    if env.rank == 0:
        model.config.save_pretrained(run.root / "model_config")
    print0(f"finetuning {config.preset} on {config.data}: {index.num_samples} samples, {env.world_size} rank(s), "
           f"{total_steps} steps, init={config.init or config.init_mbart or 'scratch'}, "
           f"LoRA={model.config.lora_modules if model.config.use_lora else 'off'}")
    result = run_training(config, env, run, engine, task)
    print0(f"done at step {result.state.step}: " + ", ".join(
        f"{k}={v:.2f}" for k, v in result.final_metrics.items() if k.endswith(("bleu4", "rouge_l"))))
    shutdown_distributed(env)
    return result.final_metrics


if __name__ == "__main__":
    main()
