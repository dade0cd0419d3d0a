"""Stage 1 of SCL-SLT: vision-language pretraining with random or Pair-Selected negatives.

The model learns to pull each sign video towards its sentence and away from the other sentences of the
global batch (contrastive loss over all ranks, same-sentence pairs never negatives), while its decoder
learns to translate (joint translation loss). Three kinds of run use this entry point:

* a reference run: random negatives, embedding the training split after epoch 1 and then every k epochs
  (`--record-trajectory-every k`) to record the similarity trajectories;
* an SCL-SLT run: `--negatives ps --reference-run REF`: every global batch built by the curriculum sampler
  from the PS scores of REF's trajectories (at least 3 reference checkpoints), scored with the loss's own
  similarity; every in-batch negative counts (an in-loss mask is an option: `--ps-keep-fraction`);
* one run instead of two (beyond the paper): `--negatives ps --reference-run self`: random negatives while
  the run records its own trajectory (K = `--self-reference-checkpoints` checkpoints, every k epochs), then
  Pair Selection from those checkpoints for the remaining epochs, the curriculum spanning them.

Commands (the run resumes from OUT's newest checkpoint when there is one):

    # CPU, one process (the demo)
    python -m recipe.pretrain --data shards/ --out runs/ref --record-trajectory-every 2
    python -m recipe.pretrain --data shards/ --out runs/scl --negatives ps --reference-run runs/ref
    # CPU, two processes
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 recipe/pretrain.py --deepspeed_config ds_configs/zero2.json ...
    # 8 GPUs, bf16
    deepspeed --num_gpus 8 recipe/pretrain.py --deepspeed_config ds_configs/zero2_bf16.json --preset large ...
    # SLURM: sbatch slurm/pretrain.sh (see its header)
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `recipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recipe.batch_planning import EpochPlanner
from recipe.build import (SampledEpochs, build_model, initialize_engine, prepare_tokenizer, reader_config,
                          real_frame_count, video_inputs)
from recipe.config import PretrainConfig, build_parser as config_parser, parse_config
from recipe.contrastive import ContrastiveLoss
from recipe.curriculum import CurriculumSchedule
from recipe.dist import DistEnv, host_group, init_distributed, print0, shutdown_distributed
from recipe.features import ContrastiveFeatures
from recipe.pair_selection import (CurriculumBatchSampler, PairScorer, PairSelectionMask, RandomBatchSampler,
                                   score_weights)
from recipe.retrieval import recall_at_k
from recipe.run_dir import RunDir
from recipe.seeding import seed_everything
from recipe.similarity import similarity
from recipe.text import tokenize_targets
from recipe.token_scores import CACHE_DIR, cached_symmetric_scores
from recipe.trajectory_store import (is_reference_epoch, load_trajectory, reference_epochs,
                                     require_reference_checkpoints, save_reference_checkpoint)
from recipe.training import planned_total_steps, run_training
from sharded_data.format import load_index
from sharded_data.reader import make_eval_loader

SELF_REFERENCE = "self"
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
        # A freshly built model is in train mode with its frozen text encoder too (dropout on): only
        # SignTranslationModel.train() puts that encoder in eval mode. Apply it now, not first at the end of
        # the first evaluation or trajectory recording (engine.train()), or a run resumed after that point
        # would train without the dropout the uninterrupted run had before it.
        self.train()

    def forward(self, frames, frame_mask, text_ids, text_mask, labels=None, num_real_frames=None, contrastive=True):
        """(contrastive features or None, clamped logit scale, translation loss or None)."""
        visual = self.model.sign_encoder(frames, frame_mask, num_real_frames=num_real_frames)
        features = (self.model.contrastive_features(frames, frame_mask, text_ids, text_mask, visual=visual)
                    if contrastive else None)
        translation_loss = None
        if labels is not None:
            translation_loss = self.model(encoder_outputs=visual, labels=labels).loss
        logit_scale = self.model.logit_scale.clamp(0.0, MAX_LOGIT_SCALE)
        return features, logit_scale, translation_loss


class PretrainingTask:
    """The stage-1 `TrainingTask`: batches from the (random or curriculum) sampler, contrastive + translation."""

    def __init__(self, config: PretrainConfig, env: DistEnv, run: RunDir, tokenizer, frame_size: int,
                 device: torch.device | None = None) -> None:
        self.config, self.env, self.run, self.tokenizer = config, env, run, tokenizer
        self.device = device or (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                 else torch.device("cpu"))
        self.reader = reader_config(config, frame_size, env.local_world_size)
        self.index = load_index(config.data, "train")
        self.global_batch = config.micro_batch_size * env.world_size
        self.ps_similarity = ps_similarity_of(config)
        self.selection: PairSelectionMask | None = None
        self.curriculum: CurriculumBatchSampler | None = None
        self.epoch = 0  # the epoch in progress (set when its batches are requested)
        random_batches = RandomBatchSampler(self.index.sample_id, self.global_batch, seed=config.seed)
        self.self_reference = config.negatives == "ps" and config.reference_run == SELF_REFERENCE
        self.first_ps_epoch: int | None = None  # the first epoch of Pair Selection batches (None: random negatives)
        if config.negatives == "ps":
            self.num_epochs = planned_epochs(config, self.index.num_samples, self.global_batch)
            self.schedule = CurriculumSchedule(config.curriculum)
            if self.self_reference:
                # The K-th checkpoint of its own trajectory is written at the end of epoch first_ps_epoch - 1.
                self.reference = run.root
                self.first_ps_epoch = reference_epochs(config.record_trajectory_every,
                                                       config.self_reference_checkpoints)[-1]
                if self.first_ps_epoch >= self.num_epochs:
                    raise SystemExit(
                        f"--reference-run self records {config.self_reference_checkpoints} checkpoints, the last after "
                        f"epoch {self.first_ps_epoch}, but the run has {self.num_epochs} epochs: no epoch would be left "
                        "for Pair Selection; train longer (--epochs / --max-steps) or record sooner "
                        "(--record-trajectory-every, --self-reference-checkpoints)")
            else:
                self.reference = Path(config.reference_run)
                self.first_ps_epoch = 0
                self.start_pair_selection()  # before the engine: a bad reference fails fast
            self.sampler = EpochPlanner(self.plan_epoch, len(random_batches), self.num_epochs,
                                        can_plan_ahead=lambda epoch: not self.in_ps_epoch(epoch)
                                        or self.curriculum is not None)
        else:
            self.sampler = random_batches
        self.random_batches = random_batches
        self.loss_fn = ContrastiveLoss(similarity_kind=config.similarity, same_sentence=config.same_sentence)
        self.translation = config.translation_weight > 0
        self.epochs = SampledEpochs(config, env, self.sampler, self.reader)
        # --translation-batches iid: in Pair Selection epochs the translation loss reads the random arm's batches
        # (the same seed gives the same batches), the contrastive loss the curriculum's.
        self.iid_translation = (SampledEpochs(config, env, random_batches, self.reader)
                                if config.translation_batches == "iid" else None)

    # -- Pair Selection -------------------------------------------------------------------------------
    def in_ps_epoch(self, epoch: int) -> bool:
        return self.first_ps_epoch is not None and epoch >= self.first_ps_epoch

    def start_pair_selection(self) -> None:
        """Collective: read the reference trajectory, score it (token scores: every rank computes its rows of
        the score matrix on its device, or reuses the run's cache), and build the curriculum sampler."""
        config = self.config
        trajectory = load_trajectory(self.reference, load_tokens=False)
        if self.self_reference:
            expected = reference_epochs(config.record_trajectory_every, config.self_reference_checkpoints)
            waited = 0
            while trajectory.epochs != expected and waited < 60:  # a shared file system may list new files late
                time.sleep(5)
                waited += 5
                trajectory = load_trajectory(self.reference, load_tokens=False)
            if trajectory.epochs != expected:
                raise RuntimeError(
                    f"{self.reference / 'trajectories'} holds reference checkpoints of epochs {trajectory.epochs}, but "
                    f"--reference-run self records exactly those of epochs {expected} (--record-trajectory-every "
                    f"{config.record_trajectory_every}, --self-reference-checkpoints {config.self_reference_checkpoints}):"
                    " remove the stray files, or start this run in a fresh --out")
        require_reference_checkpoints(trajectory)
        symmetric = None
        if self.ps_similarity == "token":
            if not trajectory.has_tokens:
                raise ValueError(f"{self.reference}: the reference checkpoints store no token embeddings, which "
                                 "--ps-similarity token (the default with --similarity token) needs: record the "
                                 "reference run with --similarity token, or pass --ps-similarity cls / mean / pooled")
            weights, used = score_weights(config.ps_score, trajectory.num_checkpoints)
            symmetric = cached_symmetric_scores(trajectory, config.ps_score, weights, used, "token",
                                                self.run.root / CACHE_DIR, self.device)
        scorer = PairScorer(trajectory, config.ps_score, self.ps_similarity, same_sentence=config.same_sentence,
                            symmetric_scores=symmetric, device=self.device)
        self.curriculum = CurriculumBatchSampler(scorer, self.global_batch, self.schedule, num_epochs=self.num_epochs,
                                                 seed=config.seed, pool_size=config.ps_pool_size or None,
                                                 first_epoch=self.first_ps_epoch)
        if config.ps_keep_fraction < 1.0:
            self.selection = PairSelectionMask(scorer, self.schedule, num_epochs=self.num_epochs,
                                               keep_fraction=config.ps_keep_fraction, first_epoch=self.first_ps_epoch)
        print0(f"Pair Selection from {trajectory.num_checkpoints} reference checkpoints of {self.reference} "
               f"(epochs {trajectory.epochs}), score {config.ps_score}, similarity {self.ps_similarity}, "
               f"from epoch {self.first_ps_epoch}")

    def plan_epoch(self, epoch: int) -> list[list[int]]:
        """An epoch's global batches (called by the planner, on rank 0, usually in the background)."""
        if self.in_ps_epoch(epoch):
            return self.curriculum.epoch_batches(epoch)
        return self.random_batches.epoch_batches(epoch)

    # -- batches ------------------------------------------------------------------------------------
    def micro_batches_per_epoch(self) -> int:
        return self.epochs.micro_batches_per_epoch()

    def epoch_batches(self, epoch: int, skip: int):
        """Collective (every rank, at the start of each epoch)."""
        self.epoch = epoch
        if self.in_ps_epoch(epoch) and self.curriculum is None:  # --reference-run self: the switch (or a resume)
            self.start_pair_selection()
        if self.iid_translation is not None and self.in_ps_epoch(epoch):
            return paired_batches(self.epochs.epoch_batches(epoch, skip), self.iid_translation.epoch_batches(epoch, skip))
        return self.epochs.epoch_batches(epoch, skip)

    # -- loss -----------------------------------------------------------------------------------------
    def compute_loss(self, engine, batch: dict, progress: float):
        separate = batch.get("translation")  # --translation-batches iid, in a Pair Selection epoch
        if separate is not None:
            batch = batch["contrastive"]
        frames, frame_mask = video_inputs(batch, engine)
        text = tokenize_targets(self.tokenizer, batch["texts"], self.config.max_text_tokens).to(engine.device)
        labels = self.translation_labels(batch, text, engine) if self.translation and separate is None else None
        features, logit_scale, translation_loss = engine(frames, frame_mask, text.ids, text.mask, labels,
                                                         num_real_frames=real_frame_count(batch))
        if separate is not None:
            frames, frame_mask = video_inputs(separate, engine)
            text = tokenize_targets(self.tokenizer, separate["texts"], self.config.max_text_tokens).to(engine.device)
            _, _, translation_loss = engine(frames, frame_mask, text.ids, text.mask,
                                            self.translation_labels(separate, text, engine),
                                            num_real_frames=real_frame_count(separate), contrastive=False)
        pair_selection = self.in_ps_epoch(self.epoch)
        selection = self.selection if pair_selection else None
        if selection is not None:
            selection.set_epoch(self.epoch)
        # Padding rows (stand-ins for skipped samples) are flagged for the loss; a batch without any, nearly all of
        # them, is checked on the CPU tensor (no device sync) and takes the loss's plain mean. Ids and flags stay
        # on the host: the loss gathers them between hosts and the PS mask looks them up there.
        padded = {} if bool(batch["valid"].all()) else {"valid": batch["valid"]}
        contrastive = self.loss_fn(features, logit_scale, batch["sample_ids"], batch["sentence_ids"],
                                   selection=selection, **padded)
        loss = contrastive["loss"]
        metrics = {"contrastive_loss": contrastive["loss"].detach(), "temperature": 1.0 / logit_scale.detach().exp(),
                   "kept_negative_fraction": contrastive["kept_negative_fraction"]}
        if translation_loss is not None:
            loss = loss + self.config.translation_weight * translation_loss
            metrics["translation_loss"] = translation_loss.detach()
        if pair_selection:
            metrics["ps_alpha"] = self.curriculum.alpha(self.epoch)
            metrics["plan_wait_s"] = self.sampler.last_wait_s
        return loss, metrics

    @staticmethod
    def translation_labels(batch: dict, text, engine) -> torch.Tensor:
        """Target tokens, with padding rows (stand-ins for skipped samples) ignored."""
        return text.labels.masked_fill(~batch["valid"].to(engine.device)[:, None], -100)

    def after_optimizer_step(self, engine) -> dict:
        return {}

    # -- evaluation and trajectories ------------------------------------------------------------------
    def evaluate(self, engine, step: int, final: bool) -> dict:
        embedded = self.embed_split(engine, "dev", storage=torch.float32)
        if embedded is None:  # not rank 0
            return {}
        sample_ids, sentence_ids, features = embedded
        # On the GPU: the split's token similarity is the quadratic part (rank 0's CPU would take minutes).
        device = engine.device
        scores = similarity(features.video.to(device), features.video_mask.to(device), features.text.to(device),
                            features.text_mask.to(device), kind=self.config.similarity)
        return {f"dev_{name}": value for name, value in recall_at_k(scores, sentence_ids.to(device)).items()}

    def records_reference(self, finished_epochs: int) -> bool:
        """After epoch 1, then every k epochs; --reference-run self stops once its own trajectory is complete."""
        if not is_reference_epoch(finished_epochs, self.config.record_trajectory_every):
            return False
        return not self.self_reference or finished_epochs <= self.first_ps_epoch

    def on_epoch_end(self, engine, epoch: int) -> None:
        if not self.records_reference(epoch):
            return
        embedded = self.embed_split(engine, "train", storage=torch.float16)
        if embedded is not None:
            sample_ids, sentence_ids, features = embedded
            tokens = ((features.video, features.video_mask, features.text, features.text_mask)
                      if self.ps_similarity == "token" else ())
            path = save_reference_checkpoint(
                self.run.root, epoch, sample_ids, sentence_ids, pooled(features.video, features.video_mask),
                pooled(features.text, features.text_mask), *tokens,
                video_cls=features.video[:, 0], text_cls=features.text[:, 0])
            print0(f"reference checkpoint of epoch {epoch}: {path}")
        dist.barrier() if dist.is_initialized() else None

    @torch.no_grad()
    def embed_split(self, engine, split: str, storage: torch.dtype):
        """Embed every sample of a split once (the ranks share the work) and collect the features on rank 0.

        Rank 0 receives them batch by batch (gather to rank 0 only: no rank holds the others' features, and
        nobody holds the whole split in float32); token features are L2-normalised in float32 whatever the
        engine's precision, then kept as `storage` (fp16 for trajectories). Returns (sample_ids, sentence_ids,
        features) ordered by sample id on rank 0, None on the other ranks.
        """
        was_training = engine.module.training
        engine.eval()
        loader = make_eval_loader(self.config.data, split, self.config.micro_batch_size, self.env.rank,
                                  self.env.world_size, self.reader)
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        main = not distributed or dist.get_rank() == 0
        parts = []
        for batch in loader:
            frames, frame_mask = video_inputs(batch, engine)
            text = tokenize_targets(self.tokenizer, batch["texts"], self.config.max_text_tokens).to(engine.device)
            features, _, _ = engine(frames, frame_mask, text.ids, text.mask, None,
                                    num_real_frames=real_frame_count(batch))
            keep = batch["valid"]
            video = F.normalize(features.video[keep.to(features.video.device)].float(), dim=-1)
            text_tokens = F.normalize(features.text[keep.to(features.text.device)].float(), dim=-1)
            part = (batch["sample_ids"][keep], batch["sentence_ids"][keep], video.to(storage).cpu(),
                    features.video_mask[keep.to(features.video_mask.device)].cpu(), text_tokens.to(storage).cpu(),
                    features.text_mask[keep.to(features.text_mask.device)].cpu())
            if distributed:  # every rank has the same number of batches (the eval loader pads)
                received = [None] * dist.get_world_size() if main else None
                # Over the gloo host group: CPU tensors stay on the host (NCCL would stage them on the GPU).
                dist.gather_object(part, received, dst=0, group=host_group())
                parts.extend(received or [])
            else:
                parts.append(part)
        engine.train(was_training)
        return merge_by_sample_id(parts) if main else None


def paired_batches(contrastive: Iterable[dict], translation: Iterable[dict]) -> Iterator[dict]:
    """Step by step, a contrastive batch and a translation batch (both loaders yield the same count)."""
    first, second = iter(contrastive), iter(translation)
    try:
        for batch in first:
            yield {"contrastive": batch, "translation": next(second)}
    finally:  # the loop broke off early: stop both loaders' workers
        for iterator in (first, second):
            getattr(iterator, "close", lambda: None)()


def ps_similarity_of(config: PretrainConfig) -> str:
    """The similarity Pair Selection scores with: --ps-similarity, where `loss` means the loss's --similarity."""
    return config.similarity if config.ps_similarity == "loss" else config.ps_similarity


def planned_epochs(config: PretrainConfig, num_samples: int, global_batch: int) -> int:
    """Epochs the run will train: --epochs, or as many as --max-steps reaches (the curriculum spans them)."""
    if config.max_steps <= 0:
        return max(config.epochs, 1)
    steps_per_epoch = max(1, num_samples // global_batch // config.grad_accum)
    return max(1, math.ceil(config.max_steps / steps_per_epoch))


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of token embeddings (float32): the vector of the `mean` / `pooled` PS similarity."""
    weights = mask.float().unsqueeze(-1)
    return (tokens.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)


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
    try:
        result = run_training(config, env, run, engine, task)
    finally:
        getattr(task.sampler, "close", lambda: None)()
    print0(f"done at step {result.state.step}: {result.final_metrics}")
    shutdown_distributed(env)
    return result.final_metrics


if __name__ == "__main__":
    main()
