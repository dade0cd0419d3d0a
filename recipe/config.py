"""Run configuration: typed dataclasses, one docstring-like help per field, turned into argparse flags.

One config system: the command line fills these dataclasses, the run directory stores them resolved
(`config.json`), and a requeued or resumed run is checked against the stored copy. Field `foo_bar`
becomes flag `--foo-bar`; `deepspeed_config` keeps DeepSpeed's spelling `--deepspeed_config`.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field


def _flag(name: str) -> str:
    return "--deepspeed_config" if name == "deepspeed_config" else "--" + name.replace("_", "-")


def option(default, help: str, choices: tuple | None = None, required: bool = False):
    """A config field with its help text (and choices) for the command line."""
    metadata = {"help": help, "choices": choices, "required": required}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """What pretraining and finetuning share."""

    data: str = option("", "shard directory (from sharded_data.write or sharded_data.synth)", required=True)
    out: str = option("", "run directory: config, tokenizer, metrics, checkpoints; resumed if it has a checkpoint", required=True)
    deepspeed_config: str = option("ds_configs/zero2.json", "DeepSpeed JSON (batch fields are filled from this config)")
    preset: str = option("tiny", "model size", choices=("tiny", "base", "large"))
    init_mbart: str = option("", "local mBART directory (e.g. mbart-large-50, vocabulary-trimmed) to start the text "
                             "encoder, the decoder and (--init-visual) the visual transformer from; its tokenizer is "
                             "the run's unless --tokenizer names one (no downloads)")
    init_visual: str = option("mbart", "where the visual transformer starts when --init-mbart is given: mBART's "
                              "encoder (the paper) or random", choices=("mbart", "random"))
    init_resnet: str = option("", "torchvision resnet18 weights file (.pth state dict or .safetensors) for the frame "
                              "CNN (presets base/large); frames are ImageNet-normalised on every path")
    tokenizer: str = option("", "local tokenizer directory; default: the --init-mbart directory's, else "
                            "SentencePiece trained on the training sentences")
    src_lang: str = option("", "mBART tokenizers: language code of the sentences as the text encoder reads them "
                           "(default: --tgt-lang)")
    tgt_lang: str = option("", "mBART tokenizers: language code of the translations, e.g. de_DE (default: "
                           "--src-lang, else what the tokenizer directory saved)")
    vocab_size: int = option(1000, "SentencePiece vocabulary size when the tokenizer is trained here")
    character_level: bool = option(False, "character-level tokenizer (Chinese)")
    epochs: int = option(10, "training epochs (ignored when --max-steps > 0)")
    max_steps: int = option(0, "optimizer steps to train; 0 = run --epochs")
    micro_batch_size: int = option(8, "samples per rank per forward")
    grad_accum: int = option(1, "micro batches per optimizer step")
    lr: float = option(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_steps: int = option(100, "linear warmup steps before the cosine decay")
    grad_clip: float = option(1.0, "gradient clipping norm")
    max_frames: int = option(128, "frames kept per video (uniform temporal sampling above this)")
    frame_size: int = option(0, "square frame side fed to the CNN; 0 = the preset's")
    max_text_tokens: int = option(64, "target tokens kept per sentence")
    lora: str = option("auto", "LoRA on the --lora-modules: on, off (full finetuning), or auto = on each of them "
                       "exactly when it starts from pretrained mBART weights (LoRA on random weights cannot learn "
                       "much)", choices=("auto", "on", "off"))
    lora_modules: str = option("visual,decoder", "comma-separated components LoRA adapts: visual (the visual "
                               "transformer), decoder (the paper: both); the frame CNN and temporal convolutions "
                               "always train fully, the text encoder is frozen")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout")
    num_workers: int = option(-1, "data loader worker processes per rank; -1 = sized from the CPUs this process "
                                  "may use, shared among the node's ranks (recipe.build.loader_workers)")
    seed: int = option(0, "seed for model init, sampling and augmentation")
    save_every: int = option(200, "checkpoint every N optimizer steps (and always at the end)")
    keep_last: int = option(3, "checkpoints kept (older tags are deleted)")
    eval_every: int = option(200, "dev evaluation every N optimizer steps (and at the end); 0 = only at the end")
    log_every: int = option(10, "metrics to JSONL/TensorBoard every N optimizer steps")
    local_rank: int = option(-1, "set by the deepspeed launcher; ignored (the environment is read instead)")


@dataclass
class PretrainConfig(TrainConfig):
    """Stage 1: contrastive video-text learning (+ translation), random or Pair-Selected negatives."""

    similarity: str = option("token", "video-text similarity", choices=("token", "cls", "mean"))
    translation_weight: float = option(1.0, "weight of the joint translation loss (0 = pure contrastive)")
    translation_batches: str = option("same", "batches of the joint translation loss in Pair Selection epochs: the "
                                      "contrastive batch (same: the paper) or, our extension, i.i.d. random batches "
                                      "(iid: the contrastive loss sees the curriculum batches, the translation loss "
                                      "the random arm's batches; one more forward and backward per step)",
                                      choices=("same", "iid"))
    same_sentence: str = option("mask", "same-sentence pairs: masked out, extra positives, or ordinary negatives "
                                "(masking off: the ablation)", choices=("mask", "positive", "negative"))
    negatives: str = option("random", "negatives: random in-batch, or Pair Selection", choices=("random", "ps"))
    curriculum: str = option("log", "Pair Selection schedule: alpha (0 = easiest, 1 = hardest candidate) = f(e / E) "
                             "at epoch e of E; log: 1 + 0.1 ln(x + e^-10) (the paper's best), linear: x, sqrt: "
                             "sqrt(x); easy, hard: the ablations (recipe/curriculum.py)",
                             choices=("log", "linear", "sqrt", "easy", "hard"))
    ps_score: str = option("delta", "Pair Selection score of a pair's similarity trajectory: delta = last - first "
                           "(the paper's); mean, slope, var, last: our alternatives",
                           choices=("delta", "mean", "slope", "var", "last"))
    ps_similarity: str = option("loss", "similarity the Pair Selection trajectories are scored with: loss = the "
                                "loss's --similarity (the paper: the similarity it trains with); token, cls, mean; "
                                "pooled = mean (the stored masked-mean vectors)",
                                choices=("loss", "token", "cls", "mean", "pooled"))
    ps_pool_size: int = option(512, "candidates drawn per batch for the greedy builder (0 = all remaining samples: "
                                    "exact, but ~70 CPU s per epoch at 18k samples)")
    ps_keep_fraction: float = option(1.0, "our extension, off at 1.0 (the paper: every in-batch negative counts): "
                                          "< 1 keeps only this share of each sample's negatives in the loss, a window "
                                          "sliding from the easiest to the hardest with the curriculum")
    reference_run: str = option("", "run whose trajectories drive Pair Selection (--negatives ps), recorded with "
                                "--record-trajectory-every; 'self' (beyond the paper: one run instead of two): "
                                "random negatives while this run records its own trajectory "
                                "(--record-trajectory-every k, --self-reference-checkpoints K), Pair Selection after")
    self_reference_checkpoints: int = option(3, "--reference-run self: reference checkpoints to record (after epoch 1, "
                                             "then every k epochs) before switching to Pair Selection")
    record_trajectory_every: int = option(0, "record a reference checkpoint (embed the training split) after epoch 1 "
                                          "and then every k epochs (the paper: k = 5); 0 = off")
    label_smoothing: float = option(0.2, "label smoothing of the translation loss")


@dataclass
class FinetuneConfig(TrainConfig):
    """Stage 2: translation finetuning, from a pretraining run or from scratch."""

    init: str = option("", "pretraining run to start from (its latest checkpoint); empty = from scratch")
    init_tag: str = option("", "checkpoint tag of --init (default: its latest)")
    label_smoothing: float = option(0.2, "label smoothing of the translation loss")
    num_beams: int = option(5, "beam size for evaluation")
    max_new_tokens: int = option(60, "longest generated translation")
    bleu_tokenize: str = option("13a", "sacreBLEU tokenizer: 13a (German, English), zh (Chinese)", choices=("13a", "zh", "intl", "char", "none"))


Config = typing.TypeVar("Config", bound=TrainConfig)


def build_parser(config_class: type[TrainConfig], description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description or config_class.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_class)
    for spec in dataclasses.fields(config_class):
        kind, meta = hints[spec.name], spec.metadata
        flags = [_flag(spec.name)]
        if spec.name == "local_rank":
            flags.append("--local_rank")
        if kind is bool:
            parser.add_argument(*flags, dest=spec.name, action=argparse.BooleanOptionalAction,
                                default=spec.default, help=meta.get("help"))
            continue
        parser.add_argument(*flags, dest=spec.name, type=kind, default=spec.default, help=meta.get("help"),
                            choices=meta.get("choices"), required=meta.get("required", False))
    return parser


def parse_config(config_class: type[Config], argv: list[str] | None = None) -> Config:
    args = build_parser(config_class).parse_args(argv)
    config = config_class(**vars(args))
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Refuse inconsistent settings before any compute, naming the flag and the fix."""
    problems = []
    if config.micro_batch_size < 1 or config.grad_accum < 1:
        problems.append("--micro-batch-size and --grad-accum must be >= 1")
    if config.max_steps <= 0 and config.epochs <= 0:
        problems.append("give --epochs > 0 or --max-steps > 0")
    if config.keep_last < 1:
        problems.append("--keep-last must be >= 1 (the latest checkpoint is always kept)")
    unknown = sorted(set(lora_module_list(config)) - set(LORA_MODULES))
    if unknown:
        problems.append(f"--lora-modules: unknown {unknown}; choose from {','.join(LORA_MODULES)}")
    mbart_tokenizer = config.tokenizer or config.init_mbart or (isinstance(config, FinetuneConfig) and config.init)
    if (config.src_lang or config.tgt_lang) and not mbart_tokenizer:
        problems.append("--src-lang/--tgt-lang name an mBART tokenizer's language codes: give --init-mbart DIR or "
                        "--tokenizer DIR (the SentencePiece tokenizer trained here has none)")
    if isinstance(config, FinetuneConfig) and config.init and (config.init_resnet or config.init_mbart):
        problems.append("--init-resnet/--init-mbart start a new model; with --init RUN every weight comes from "
                        "that pretraining run: drop them")
    if isinstance(config, PretrainConfig):
        if config.negatives == "ps" and not config.reference_run:
            problems.append("--negatives ps needs --reference-run RUN (a run made with --record-trajectory-every k) "
                            "or --reference-run self")
        if config.reference_run == "self" and config.negatives != "ps":
            problems.append("--reference-run self is a Pair Selection run: add --negatives ps")
        if config.reference_run == "self" and config.record_trajectory_every < 1:
            problems.append("--reference-run self records its own trajectory: give --record-trajectory-every k >= 1 "
                            "(the paper: k = 5)")
        if config.reference_run == "self" and config.self_reference_checkpoints < 3:
            problems.append(f"--self-reference-checkpoints must be >= 3 (a trajectory, not one difference), got "
                            f"{config.self_reference_checkpoints}")
        if config.translation_batches == "iid" and (config.negatives != "ps" or config.translation_weight <= 0):
            problems.append("--translation-batches iid separates the translation loss's batches from Pair Selection's: "
                            "it needs --negatives ps and --translation-weight > 0")
        if config.ps_pool_size < 0:
            problems.append(f"--ps-pool-size must be >= 0 (0 = every remaining sample), got {config.ps_pool_size}")
        if not 0.0 < config.ps_keep_fraction <= 1.0:
            problems.append(f"--ps-keep-fraction must lie in (0, 1], got {config.ps_keep_fraction}")
        if config.micro_batch_size < 2 and config.negatives == "ps":
            problems.append("Pair Selection needs batches of at least 2 samples (--micro-batch-size)")
    if problems:
        raise SystemExit("invalid configuration:\n  " + "\n  ".join(problems))


LORA_MODULES = ("visual", "decoder")  # recipe.modeling.LORA_MODULES (not imported: configs stay torch-free)


def lora_module_list(config: TrainConfig) -> list[str]:
    """--lora-modules as a list, in the canonical order."""
    named = [name.strip() for name in config.lora_modules.split(",") if name.strip()]
    return [name for name in LORA_MODULES if name in named] + [name for name in named if name not in LORA_MODULES]


def to_dict(config: TrainConfig) -> dict:
    out = dataclasses.asdict(config)
    out.pop("local_rank", None)
    return out
