"""What both training stages build the same way: tokenizer, model, DeepSpeed engine, reader settings.

Every function here that touches the file system or the process group is a collective (call it on
every rank): rank 0 writes, the others wait at a barrier and then read.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipe.attention import choose_attn_implementation
from recipe.config import TrainConfig, lora_module_list, to_dict
from recipe.device import frames_to_device
from recipe.dist import DistEnv, barrier, cpu_accelerator_requested, print0
from recipe.ds_config import load_ds_config, resolve_ds_config
from recipe.modeling import SignTranslationModel
from recipe.presets import build_config
from recipe.run_dir import RunDir
from recipe.seeding import enable_tf32
from recipe.tokenizer import detect_convention, load_tokenizer, set_languages, train_tokenizer
from recipe.training import preflight
from sharded_data.reader import ReaderConfig, make_indexed_loader

TOKENIZER_FILE = "tokenizer_config.json"


def prepare_tokenizer(config: TrainConfig, run: RunDir, train_texts: list[str], source: str = "") -> Any:
    """The run's tokenizer, kept in RUN/tokenizer so the run directory is self-describing.

    Taken, in order, from: the run itself (a resumed run), `source` (the tokenizer of the run this one
    starts from), `--tokenizer DIR`, the `--init-mbart` directory (its embedding rows are that tokenizer's
    ids), or trained here with SentencePiece on the training sentences. An mBART tokenizer gets its
    languages (`--src-lang/--tgt-lang`, or what its directory saved) before it is saved into the run.
    """
    target = run.tokenizer
    # Only rank 0 looks: a rank that starts late would otherwise see rank 0's fresh tokenizer, skip the
    # barrier, and pair every later collective with the wrong one (a hang).
    if _rank() == 0 and not (target / TOKENIZER_FILE).exists():
        origin = source or config.tokenizer or config.init_mbart
        if source:
            shutil.copytree(source, target, dirs_exist_ok=True)
            if config.src_lang or config.tgt_lang:
                _save_with_languages(load_tokenizer(target), config, target, where=source)
        elif origin:
            if not _has_tokenizer(Path(origin)):
                raise FileNotFoundError(f"{origin} holds no tokenizer (tokenizer.json, tokenizer_config.json or "
                                        "sentencepiece.bpe.model): give the mBART's tokenizer with --tokenizer DIR")
            _save_with_languages(load_tokenizer(origin), config, target, where=origin)
        else:
            if config.src_lang or config.tgt_lang:
                raise ValueError("--src-lang/--tgt-lang apply to mBART tokenizers (--tokenizer or --init-mbart), not "
                                 "to the SentencePiece tokenizer trained here")
            train_tokenizer(train_texts, target, vocab_size=config.vocab_size,
                            character_level=config.character_level)
    barrier()
    return load_tokenizer(target)


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("tokenizer.json", TOKENIZER_FILE, "sentencepiece.bpe.model"))


def _save_with_languages(tokenizer: Any, config: TrainConfig, target: Path, where: str) -> None:
    set_languages(tokenizer, config.src_lang, config.tgt_lang, where=where)
    tokenizer.save_pretrained(target)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def pretrained_components(init_mbart: str, init_visual: str) -> set[str]:
    """Which LoRA-able components start from pretrained weights."""
    if not init_mbart:
        return set()
    return {"decoder", "visual"} if init_visual == "mbart" else {"decoder"}


def lora_modules_for(config: TrainConfig, pretrained: set[str]) -> list[str]:
    """The components that get LoRA: --lora-modules, all (on), none (off), or the pretrained ones (auto)."""
    requested = lora_module_list(config)
    if config.lora == "off":
        return []
    if config.lora == "on":
        return requested
    return [name for name in requested if name in pretrained]


def model_config_for(config: TrainConfig, tokenizer: Any, label_smoothing: float):
    """The network's config: the preset, sized to the tokenizer and following its convention, with the run's
    LoRA and loss settings."""
    lora_modules = lora_modules_for(config, pretrained_components(config.init_mbart, config.init_visual))
    convention = detect_convention(tokenizer)
    overrides: dict[str, Any] = dict(
        use_lora=bool(lora_modules),
        lora_modules=lora_modules,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        label_smoothing=label_smoothing,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=convention.decoder_start_token_id,
        forced_bos_token_id=convention.forced_bos_token_id,
        text_summary=convention.text_summary,
    )
    if config.init_resnet:
        overrides["subtract_clip_mean"] = False  # ImageNet features expect natural (normalised) images
    if config.frame_size:
        overrides["frame_size"] = config.frame_size
    overrides["max_position_embeddings"] = max(config.max_text_tokens, 32)
    # ~4x temporal downsampling plus the summary token; a margin so no sampled clip can overflow.
    overrides["max_visual_tokens"] = config.max_frames // 4 + 8
    return build_config(config.preset, vocab_size=len(tokenizer),
                        attn_implementation=choose_attn_implementation(training_dtype(config)), **overrides)


def training_dtype(config: TrainConfig) -> torch.dtype:
    """The precision the DeepSpeed config trains in (bf16, fp16 or fp32): it decides the attention kernel."""
    ds_config = load_ds_config(config.deepspeed_config)
    if ds_config.get("bf16", {}).get("enabled", False):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled", False):
        return torch.float16
    return torch.float32


def build_model(config: TrainConfig, tokenizer: Any, label_smoothing: float) -> SignTranslationModel:
    """The network of a run that starts here: from the preset, or from --init-mbart; --init-resnet on top."""
    model_config = model_config_for(config, tokenizer, label_smoothing)
    if config.init_mbart:
        notes: list[str] = []
        model = SignTranslationModel.from_mbart(config.init_mbart, model_config,
                                                init_visual=config.init_visual == "mbart", notes=notes)
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but {config.init_mbart} has "
                             f"{model.config.vocab_size} embedding rows: use the mBART's own tokenizer (trim both "
                             "together with python -m recipe.vocab_trim)")
        print0("\n".join(notes))
    else:
        model = SignTranslationModel(model_config)
    if config.init_resnet:
        model.sign_encoder.load_resnet18_weights(config.init_resnet)
        print0(f"frame CNN from {config.init_resnet} (ImageNet ResNet-18; frames are ImageNet-normalised)")
    adapted = model.config.lora_modules if model.config.use_lora else []
    print0(f"LoRA on: {', '.join(adapted) or 'nothing'} (r={model.config.lora_r}, alpha={model.config.lora_alpha}); "
           f"text encoder {'frozen' if model.config.freeze_text_encoder else 'trained'}")
    return model


# Loader workers per rank when --num-workers is left at auto (-1): the CPUs this process may run on, shared
# among the node's ranks, less one for the training process itself, at most this many. Each worker holds
# prefetch_factor decoded batches in shared memory, so more workers than the GPU needs only cost memory.
MAX_AUTO_WORKERS = 16


def loader_workers(requested: int, local_world_size: int, cpus: int | None = None) -> int:
    """Worker processes per rank: `requested` if >= 0, else sized from this process's CPU allocation.

    `cpus` defaults to the CPUs this process may use (its affinity: what SLURM's `--cpus-per-task` binding,
    taskset or a container grants, not the machine's count). benchmarks/results/data.md says how many
    cores per GPU the presets need.
    """
    if requested >= 0:
        return requested
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_world_size) - 1))


def reader_config(config: TrainConfig, frame_size: int, local_world_size: int = 1) -> ReaderConfig:
    """uint8 batches (normalised on the device by `video_inputs`), workers sized from the allocation, pinned
    memory on GPU machines."""
    return ReaderConfig(frame_size=frame_size, max_frames=config.max_frames,
                        num_workers=loader_workers(config.num_workers, local_world_size),
                        seed=config.seed, pin_memory=torch.cuda.is_available(), output="uint8")


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
        allow_cpu_bf16=cpu_accelerator_requested(),
    )
    preflight(config, run, ds_config)  # data complete, a resume is the same run: before config.json is rewritten
    if env.rank == 0:
        run.describe(to_dict(config), ds_config, env.world_size)
    barrier()
    enable_tf32()
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
    """Frames on the engine's device, normalised there (uint8 batches) and in its precision; the frame mask."""
    frames = frames_to_device(batch["frames"], engine.device, engine_dtype(engine))
    return frames, batch["frame_mask"].to(engine.device, non_blocking=True)


def real_frame_count(batch: dict) -> int:
    """Real frames in a batch, from its mask on the host: the model picks them without waiting for the GPU."""
    return int(batch["frame_mask"].sum())


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
