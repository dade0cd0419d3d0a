"""What both training stages build the same way: tokenizer, model, DeepSpeed engine, reader settings.

Every function here that touches the file system or the process group is a collective (call it on
every rank): rank 0 writes, the others wait at a barrier and then read.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipe.config import TrainConfig, to_dict
from recipe.dist import DistEnv, barrier
from recipe.ds_config import resolve_ds_config
from recipe.modeling import SignTranslationModel
from recipe.presets import build_config
from recipe.run_dir import RunDir
from recipe.tokenizer import load_tokenizer, train_tokenizer
from recipe.training import preflight
from sharded_data.reader import ReaderConfig, make_indexed_loader

TOKENIZER_FILE = "tokenizer_config.json"


def prepare_tokenizer(config: TrainConfig, run: RunDir, train_texts: list[str], source: str = "") -> Any:
    """The run's tokenizer, kept in RUN/tokenizer so the run directory is self-describing.

    Taken, in order, from: the run itself (a resumed run), `source` (the tokenizer of the run this one
    starts from), `--tokenizer DIR`, or trained here with SentencePiece on the training sentences.
    """
    target = run.tokenizer
    # Only rank 0 looks: a rank that starts late would otherwise see rank 0's fresh tokenizer, skip the
    # barrier, and pair every later collective with the wrong one (a hang).
    if _rank() == 0 and not (target / TOKENIZER_FILE).exists():
        origin = source or config.tokenizer
        if origin:
            shutil.copytree(origin, target, dirs_exist_ok=True)
        else:
            train_tokenizer(train_texts, target, vocab_size=config.vocab_size,
                            character_level=config.character_level)
    barrier()
    return load_tokenizer(target)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def model_config_for(config: TrainConfig, tokenizer: Any, label_smoothing: float, use_lora: bool | None = None):
    """The network's config: the preset, sized to the tokenizer, with the run's LoRA and loss settings."""
    overrides: dict[str, Any] = dict(
        use_lora=(config.lora == "on" or (config.lora == "auto" and bool(config.init_mbart))) if use_lora is None else use_lora,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        label_smoothing=label_smoothing,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    if config.frame_size:
        overrides["frame_size"] = config.frame_size
    overrides["max_position_embeddings"] = max(config.max_text_tokens, 32)
    # ~4x temporal downsampling plus the summary token; a margin so no sampled clip can overflow.
    overrides["max_visual_tokens"] = config.max_frames // 4 + 8
    return build_config(config.preset, vocab_size=len(tokenizer), **overrides)


def build_model(config: TrainConfig, tokenizer: Any, label_smoothing: float, use_lora: bool | None = None) -> SignTranslationModel:
    model_config = model_config_for(config, tokenizer, label_smoothing, use_lora)
    if config.init_mbart:
        return SignTranslationModel.from_mbart(config.init_mbart, model_config)
    return SignTranslationModel(model_config)


def reader_config(config: TrainConfig, frame_size: int) -> ReaderConfig:
    return ReaderConfig(frame_size=frame_size, max_frames=config.max_frames, num_workers=config.num_workers,
                        seed=config.seed, pin_memory=torch.cuda.is_available())


def initialize_engine(config: TrainConfig, env: DistEnv, run: RunDir, module: nn.Module, total_steps: int) -> Any:
    """Resolve the ds_config against the run's numbers, describe the run directory, start DeepSpeed."""
    import deepspeed

    ds_config = resolve_ds_config(
        config.deepspeed_config,
        micro_batch_size=config.micro_batch_size,
        grad_accum=config.grad_accum,
        world_size=env.world_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        gradient_clipping=config.grad_clip,
        warmup_steps=max(1, min(config.warmup_steps, total_steps)),
        total_steps=total_steps,
    )
    preflight(config, run, ds_config)  # data complete, a resume is the same run: before config.json is rewritten
    if env.rank == 0:
        run.describe(to_dict(config), ds_config, env.world_size)
    barrier()
    trainable = [p for p in module.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=trainable, config=ds_config)
    return engine


def engine_dtype(engine: Any) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def video_inputs(batch: dict, engine: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames in the engine's precision on its device, and the frame mask."""
    frames = batch["frames"].to(engine.device, dtype=engine_dtype(engine), non_blocking=True)
    return frames, batch["frame_mask"].to(engine.device, non_blocking=True)


def is_zero3(engine: Any) -> bool:
    return engine.zero_optimization_stage() == 3


def last_checkpoint_state_dict(run_dir: str | Path, tag: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """fp32 weights of a run's checkpoint (ZeRO-1/2/3 alike), and the tag they came from.

    A run directory without a complete checkpoint, or a tag that is not complete, is refused by name.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from recipe.checkpointing import CheckpointManager, read_marker

    checkpoints = CheckpointManager(RunDir(Path(run_dir)).checkpoints)
    tag = tag or checkpoints.latest_tag() or ""
    if not tag:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under {checkpoints.directory}; train it first "
                                "(or point at the right run directory)")
    if read_marker(checkpoints.directory / tag) is None:
        raise FileNotFoundError(f"{checkpoints.directory / tag} is not a complete checkpoint (no completion marker: "
                                f"the save was interrupted); complete ones: {checkpoints.complete_tags()}")
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints.directory), tag=tag)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:  # DeepSpeed's own names no tag
        raise RuntimeError(f"{checkpoints.directory / tag}: cannot read this checkpoint, a file is missing or "
                           f"damaged ({type(error).__name__}: {error}); pick another tag with --tag / --init-tag "
                           f"(complete ones: {checkpoints.complete_tags()}) or retrain") from error
    return state, tag


class SampledEpochs:
    """A training stage's batches: the sampler's global batches, this rank's slice, through the indexed reader.

    Every rank gets the same number of micro-batches per epoch (a multiple of grad_accum), and an epoch's
    batches depend on (seed, epoch) alone, so a resumed run can skip the ones it already trained on.
    """

    def __init__(self, config: TrainConfig, env: DistEnv, sampler: Any, reader: ReaderConfig) -> None:
        self.config, self.env, self.sampler, self.reader = config, env, sampler, reader

    def micro_batches_per_epoch(self) -> int:
        return len(self.sampler) // self.config.grad_accum * self.config.grad_accum

    def epoch_batches(self, epoch: int, skip: int):
        global_batches = self.sampler.epoch_batches(epoch)[skip:self.micro_batches_per_epoch()]
        mine = [self.sampler.rank_slice(batch, self.env.rank, self.env.world_size) for batch in global_batches]
        return make_indexed_loader(self.config.data, "train", mine, self.config.micro_batch_size, self.reader,
                                   train=True, epoch=epoch)
