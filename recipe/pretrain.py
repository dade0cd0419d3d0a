"""Stage 1 of SCL-SLT: vision-language pretraining with random or Pair-Selected negatives.

The model learns to pull each sign video towards its sentence and away from the other sentences of the
global batch (contrastive loss over all ranks, same-sentence pairs never negatives), while its decoder
learns to translate (joint translation loss). Two kinds of run use this entry point:

* a reference run: random negatives, embedding the training split every k epochs
  (`--record-trajectory-every k`) to record the similarity trajectories;
* an SCL-SLT run: `--negatives ps --reference-run REF`: batches built by the curriculum sampler from
  the PS scores of REF's trajectories, and a PS mask on the negatives inside the loss.

Commands (the run resumes from OUT's newest checkpoint when there is one):

    # CPU, one process (the demo)
    python -m recipe.pretrain --data shards/ --out runs/ref --record-trajectory-every 2
    # CPU, two processes
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 recipe/pretrain.py --deepspeed_config ds_configs/zero2.json ...
    # 8 GPUs, bf16
    deepspeed --num_gpus 8 recipe/pretrain.py --deepspeed_config ds_configs/zero2_bf16.json --preset large ...
    # SLURM: sbatch slurm/pretrain.sh (see its header)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `recipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch import nn

from recipe.build import (SampledEpochs, build_model, initialize_engine, prepare_tokenizer, reader_config,
                          real_frame_count, video_inputs)
from recipe.config import PretrainConfig, build_parser as config_parser, parse_config
from recipe.contrastive import ContrastiveLoss
from recipe.curriculum import CurriculumSchedule
from recipe.dist import DistEnv, init_distributed, print0, shutdown_distributed
from recipe.features import ContrastiveFeatures
from recipe.pair_selection import CurriculumBatchSampler, PairScorer, PairSelectionMask, RandomBatchSampler
from recipe.retrieval import recall_at_k
from recipe.run_dir import RunDir
from recipe.seeding import seed_everything
from recipe.similarity import similarity
from recipe.text import tokenize_targets
from recipe.trajectory_store import load_trajectory, save_reference_checkpoint
from recipe.training import planned_total_steps, run_training
from sharded_data.format import load_index
from sharded_data.reader import make_eval_loader

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the inverse temperature


class PretrainingModule(nn.Module):
    """What DeepSpeed wraps in stage 1: one forward computes both branches.

    Under ZeRO-3 a parameter is only materialised inside the forward of a module that owns (or has
    registered) it, so the temperature is read here, not by the loop, and clamped here: the loss never
    sees a scale above ln(100), and a clamped scale gets no gradient pushing it further.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        import deepspeed

        deepspeed.zero.register_external_parameter(self, model.logit_scale)

    def forward(self, frames, frame_mask, text_ids, text_mask, labels=None, num_real_frames=None):
        visual = self.model.sign_encoder(frames, frame_mask, num_real_frames=num_real_frames)
        features = self.model.contrastive_features(frames, frame_mask, text_ids, text_mask, visual=visual)
        translation_loss = None
        if labels is not None:
            translation_loss = self.model(encoder_outputs=visual, labels=labels).loss
        logit_scale = self.model.logit_scale.clamp(0.0, MAX_LOGIT_SCALE)
        return features, logit_scale, translation_loss


class PretrainingTask:
    """The stage-1 `TrainingTask`: batches from the (random or curriculum) sampler, contrastive + translation."""

    def __init__(self, config: PretrainConfig, env: DistEnv, run: RunDir, tokenizer, frame_size: int) -> None:
        self.config, self.env, self.run, self.tokenizer = config, env, run, tokenizer
        self.reader = reader_config(config, frame_size, env.local_world_size)
        self.index = load_index(config.data, "train")
        global_batch = config.micro_batch_size * env.world_size
        self.selection = None
        if config.negatives == "ps":
            num_epochs = planned_epochs(config, self.index.num_samples, global_batch)
            trajectory = load_trajectory(config.reference_run, load_tokens=False)
            schedule = CurriculumSchedule(config.curriculum)
            # Both the sampler and the loss mask score pooled vectors: token-level scoring of the mask's
            # b x G pairs costs ~1.9 CPU-s per step at the large preset's shapes against 2 ms pooled
            # (benchmarks/results/training.md). Token embeddings stay in the reference for analysis.
            scorer = PairScorer(trajectory, config.ps_score)
            self.sampler = CurriculumBatchSampler(scorer, global_batch, schedule, num_epochs=num_epochs,
                                                  seed=config.seed, pool_size=config.ps_pool_size or None)
            self.selection = PairSelectionMask(scorer, schedule, num_epochs=num_epochs,
                                               keep_fraction=config.ps_keep_fraction)
        else:
            self.sampler = RandomBatchSampler(self.index.sample_id, global_batch, seed=config.seed)
        self.loss_fn = ContrastiveLoss(similarity_kind=config.similarity, same_sentence=config.same_sentence)
        self.translation = config.translation_weight > 0
        self.epochs = SampledEpochs(config, env, self.sampler, self.reader)

    # -- batches ------------------------------------------------------------------------------------
    def micro_batches_per_epoch(self) -> int:
        return self.epochs.micro_batches_per_epoch()

    def epoch_batches(self, epoch: int, skip: int):
        return self.epochs.epoch_batches(epoch, skip)

    # -- loss -----------------------------------------------------------------------------------------
    def compute_loss(self, engine, batch: dict, progress: float):
        frames, frame_mask = video_inputs(batch, engine)
        text = tokenize_targets(self.tokenizer, batch["texts"], self.config.max_text_tokens).to(engine.device)
        labels = text.labels.masked_fill(~batch["valid"].to(engine.device)[:, None], -100) if self.translation else None
        features, logit_scale, translation_loss = engine(frames, frame_mask, text.ids, text.mask, labels,
                                                         num_real_frames=real_frame_count(batch))
        if self.selection is not None:
            self.selection.set_progress(progress)
        # Ids stay on the host: the loss gathers them between hosts and the PS mask looks them up there.
        contrastive = self.loss_fn(features, logit_scale, batch["sample_ids"], batch["sentence_ids"],
                                   selection=self.selection)
        loss = contrastive["loss"]
        metrics = {"contrastive_loss": contrastive["loss"].detach(), "temperature": 1.0 / logit_scale.detach().exp(),
                   "kept_negative_fraction": contrastive["kept_negative_fraction"]}
        if translation_loss is not None:
            loss = loss + self.config.translation_weight * translation_loss
            metrics["translation_loss"] = translation_loss.detach()
        if self.selection is not None:
            metrics["ps_alpha"] = self.selection.alpha
        return loss, metrics

    def after_optimizer_step(self, engine) -> dict:
        return {}

    # -- evaluation and trajectories ------------------------------------------------------------------
    def evaluate(self, engine, step: int, final: bool) -> dict:
        sample_ids, sentence_ids, features = self.embed_split(engine, "dev")
        if self.env.rank != 0:
            return {}
        # On the GPU: the split's token similarity is the quadratic part (rank 0's CPU would take minutes).
        device = engine.device
        scores = similarity(features.video.to(device), features.video_mask.to(device), features.text.to(device),
                            features.text_mask.to(device), kind=self.config.similarity)
        return {f"dev_{name}": value for name, value in recall_at_k(scores, sentence_ids.to(device)).items()}

    def on_epoch_end(self, engine, epoch: int) -> None:
        k = self.config.record_trajectory_every
        if k and epoch % k == 0:
            sample_ids, sentence_ids, features = self.embed_split(engine, "train")
            if self.env.rank == 0:
                path = save_reference_checkpoint(
                    self.run.root, epoch, sample_ids, sentence_ids, pooled(features.video, features.video_mask),
                    pooled(features.text, features.text_mask),
                    *((features.video, features.video_mask, features.text, features.text_mask)
                      if self.config.similarity == "token" else ()))
                print0(f"reference checkpoint of epoch {epoch}: {path}")
            dist.barrier() if dist.is_initialized() else None

    @torch.no_grad()
    def embed_split(self, engine, split: str) -> tuple[torch.Tensor, torch.Tensor, ContrastiveFeatures]:
        """Embed every sample of a split once (all ranks share the work) and gather on rank 0, by sample id."""
        was_training = engine.module.training
        engine.eval()
        loader = make_eval_loader(self.config.data, split, self.config.micro_batch_size, self.env.rank,
                                  self.env.world_size, self.reader)
        parts = []
        for batch in loader:
            frames, frame_mask = video_inputs(batch, engine)
            text = tokenize_targets(self.tokenizer, batch["texts"], self.config.max_text_tokens).to(engine.device)
            features, _, _ = engine(frames, frame_mask, text.ids, text.mask, None)
            keep = batch["valid"]
            parts.append((batch["sample_ids"][keep], batch["sentence_ids"][keep],
                          *(tensor[keep].float().cpu() for tensor in (features.video, features.video_mask,
                                                                       features.text, features.text_mask))))
        engine.train(was_training)
        gathered = [None] * self.env.world_size if dist.is_initialized() else None
        if gathered is not None:
            dist.all_gather_object(gathered, parts)
            parts = [part for rank_parts in gathered for part in rank_parts]
        return merge_by_sample_id(parts)


def planned_epochs(config: PretrainConfig, num_samples: int, global_batch: int) -> int:
    """Epochs the run will train: --epochs, or as many as --max-steps reaches (the curriculum spans them)."""
    if config.max_steps <= 0:
        return max(config.epochs, 1)
    steps_per_epoch = max(1, num_samples // global_batch // config.grad_accum)
    return max(1, math.ceil(config.max_steps / steps_per_epoch))


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of token embeddings: the pooled vector the PS sampler scores with."""
    weights = mask.float().unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def merge_by_sample_id(parts) -> tuple[torch.Tensor, torch.Tensor, ContrastiveFeatures]:
    """Concatenate per-batch feature parts (token dims padded), ordered by sample id."""
    sample_ids = torch.cat([p[0] for p in parts])
    sentence_ids = torch.cat([p[1] for p in parts])

    def cat_padded(tensors, masks):
        length = max(t.shape[1] for t in tensors)
        tokens = torch.cat([nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in tensors])
        mask = torch.cat([nn.functional.pad(m.bool(), (0, length - m.shape[1])) for m in masks])
        return tokens, mask

    video, video_mask = cat_padded([p[2] for p in parts], [p[3] for p in parts])
    text, text_mask = cat_padded([p[4] for p in parts], [p[5] for p in parts])
    order = sample_ids.argsort()
    features = ContrastiveFeatures(video[order], video_mask[order], text[order], text_mask[order])
    return sample_ids[order], sentence_ids[order], features


def build_parser():
    """The command line of this entry point (the SLURM scripts' flags are checked against it)."""
    return config_parser(PretrainConfig)


def main(argv: list[str] | None = None) -> dict:
    config = parse_config(PretrainConfig, argv)
    env = init_distributed()
    seed_everything(config.seed)
    run = RunDir(Path(config.out))
    index = load_index(config.data, "train")
    tokenizer = prepare_tokenizer(config, run, index.text)
    model = build_model(config, tokenizer, label_smoothing=config.label_smoothing)
    task = PretrainingTask(config, env, run, tokenizer, frame_size=model.config.frame_size)
    total_steps = planned_total_steps(config, task.micro_batches_per_epoch())
    engine = initialize_engine(config, env, run, PretrainingModule(model), total_steps)
    if env.rank == 0:
        model.config.save_pretrained(run.root / "model_config")  # the network, for finetuning and export
    print0(f"pretraining {config.preset} on {config.data}: {index.num_samples} samples, {env.world_size} rank(s), "
           f"{total_steps} steps, negatives={config.negatives}, zero stage {engine.zero_optimization_stage()}")
    result = run_training(config, env, run, engine, task)
    print0(f"done at step {result.state.step}: {result.final_metrics}")
    shutdown_distributed(env)
    return result.final_metrics


if __name__ == "__main__":
    main()
