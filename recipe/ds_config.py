"""Load a DeepSpeed JSON config, fill what the recipe owns, and refuse a bad file before any compute.

Division of labour (one source of truth per value):
- ds_configs/*.json hold how to train: ZeRO stage and offload, precision, optimizer type and its shape
  (AdamW betas/eps, "torch_adam": true so DeepSpeed does not JIT-compile FusedAdam), the scheduler type
  (DeepSpeed's WarmupCosineLR: linear warmup, then cosine decay to cos_min_ratio x lr, stepped by
  DeepSpeed once per optimizer step), gradient clipping off or on.
- The recipe's command line owns the numbers that change from run to run: micro batch size, gradient
  accumulation, world size (hence train_batch_size), lr, weight decay, clipping norm, warmup steps and
  total optimizer steps. The shipped files leave them out; `resolve_ds_config` fills them in.
  A file that does state one must agree with the recipe, or it is refused (silently overriding a file
  hides mistakes; silently trusting it trains a different run than the command line says).

WarmupCosineLR as DeepSpeed 0.19 implements it (checked in tests/test_ds_configs.py): the first optimizer
step runs at lr 0 (the scheduler starts at iteration -1), step k+1 at warmup_min_ratio + (1 - min) x k/W
of lr for k < W = warmup steps, then the cosine decays to cos_min_ratio x lr at total_num_steps. With
the shipped warmup_min_ratio 0, the first two optimizer steps leave the weights unchanged.

Refused, with the file, the field and the fix: missing file, invalid JSON (with line and column),
a section that is not an object (`"bf16": true`, `"zero_optimization": 2`, `"optimizer": "AdamW"`: DeepSpeed
would die on them with a bare AttributeError), "auto" anywhere (only the HF Trainer fills those), an unknown
ZeRO stage, param offload below stage 3, fp16/bf16 on a machine without CUDA, batch fields that disagree with
micro x accum x world, no scheduler (--warmup-steps and the schedule length would be silently dropped), a
scheduler type whose step counts the recipe cannot fill, and any other recipe-owned value that disagrees
(including the step counts and peak lr of every supported scheduler).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

ZERO_STAGES = (0, 1, 2, 3)
# Sections DeepSpeed reads as objects: anything else there ends in an AttributeError deep inside DeepSpeed.
OBJECT_SECTIONS = ("zero_optimization", "optimizer", "scheduler", "bf16", "fp16", "checkpoint", "data_types",
                   "activation_checkpointing", "comms_logger", "flops_profiler", "tensorboard", "wandb", "csv_monitor")
OBJECT_EXAMPLES = {"zero_optimization": '{"stage": 2}', "optimizer": '{"type": "AdamW", "params": {...}}',
                   "scheduler": '{"type": "WarmupCosineLR", "params": {...}}', "bf16": '{"enabled": true}',
                   "fp16": '{"enabled": true}'}
# The schedulers whose length the recipe fills from its flags: which step counts each takes, and whether its peak
# lr is a scheduler parameter (warmup_max_lr) rather than the optimizer's lr. Others would ignore --warmup-steps,
# --max-steps/--epochs or --lr.
SCHEDULERS = {"WarmupCosineLR": (("warmup_num_steps", "total_num_steps"), False),
              "WarmupDecayLR": (("warmup_num_steps", "total_num_steps"), True),
              "WarmupLR": (("warmup_num_steps",), True)}


class DeepSpeedConfigError(ValueError):
    """A ds_config that cannot be used as given; the message names the file, the field and the fix."""


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Parse the JSON file; errors name the file (and the line for bad JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DeepSpeedConfigError(
            f"{path}: DeepSpeed config not found; pass --deepspeed_config with one of the shipped "
            "ds_configs/*.json (zero1, zero2, zero3, zero3_offload; *_bf16 on GPU)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DeepSpeedConfigError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON ({error.msg}); fix the file at that line "
            "(JSON has no comments and no trailing commas)"
        ) from None
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(f"{path}: the top level must be a JSON object, got {type(config).__name__}")
    return config


def _find_auto(node: Any, where: str = "") -> list[str]:
    if isinstance(node, dict):
        return [hit for key, value in node.items() for hit in _find_auto(value, f"{where}.{key}" if where else key)]
    if isinstance(node, list):
        return [hit for i, value in enumerate(node) for hit in _find_auto(value, f"{where}[{i}]")]
    return [where] if node == "auto" else []


def _agree(path: Path, section: dict, key: str, value: Any, field: str, flag: str) -> None:
    """Fill `section[key]` with the recipe's value; refuse a file value that disagrees."""
    if value is None:
        return
    if key in section and section[key] != value:
        raise DeepSpeedConfigError(
            f"{path}: {field} is {section[key]!r} in the file but the recipe asks for {value!r} ({flag}); "
            f"remove {field} from the file (the recipe fills it) or pass {flag} {section[key]!r}"
        )
    section[key] = value


def _require(path: Path, section: dict, key: str, field: str, flag: str) -> None:
    if key not in section:
        raise DeepSpeedConfigError(f"{path}: {field} is not set; pass {flag} (or set {field} in the file)")


def resolve_ds_config(
    path: str | Path,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    lr: float | None = None,
    weight_decay: float | None = None,
    gradient_clipping: float | None = None,
    warmup_steps: int | None = None,
    total_steps: int | None = None,
    device_type: str | None = None,
    allow_cpu_bf16: bool = False,
) -> dict[str, Any]:
    """The dict to hand to `deepspeed.initialize(config=...)`; see the module docstring.

    `device_type` is "cuda" or "cpu" (default: "cuda" when CUDA is available). `warmup_steps` and
    `total_steps` count optimizer steps (not micro-batches). `allow_cpu_bf16` lets a bf16 config run on
    DeepSpeed's CPU accelerator (slow; the tests use it to exercise the bf16 path without a GPU).
    """
    path = Path(path)
    config = copy.deepcopy(load_ds_config(path))
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")

    _check_shapes(path, config)
    autos = _find_auto(config)
    if autos:
        raise DeepSpeedConfigError(
            f"{path}: {', '.join(autos)} = \"auto\"; only the Hugging Face Trainer resolves \"auto\". Put a number "
            "there, or remove the field if the recipe fills it (batch sizes, lr, weight decay, clipping, schedule)"
        )

    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in ZERO_STAGES:
        raise DeepSpeedConfigError(f"{path}: zero_optimization.stage is {stage!r}; use one of {list(ZERO_STAGES)}")
    if "offload_param" in zero and stage != 3:
        raise DeepSpeedConfigError(
            f"{path}: zero_optimization.offload_param needs stage 3 (the file says stage {stage}); "
            "set stage to 3 or remove offload_param"
        )
    if "offload_optimizer" in zero and stage == 0:
        raise DeepSpeedConfigError(f"{path}: zero_optimization.offload_optimizer needs stage 1, 2 or 3")

    for precision in ("fp16", "bf16"):
        if config.get(precision, {}).get("enabled", False) and device_type != "cuda" and not (
                precision == "bf16" and allow_cpu_bf16):
            raise DeepSpeedConfigError(
                f"{path}: {precision}.enabled is true but this machine has no CUDA device; "
                "use an fp32 config on CPU (ds_configs/zero1.json, zero2.json, zero3.json, zero3_offload.json)"
                + (" or, to try bf16 on DeepSpeed's CPU accelerator (slow), set DS_ACCELERATOR=cpu"
                   if precision == "bf16" else "")
            )
    if config.get("fp16", {}).get("enabled", False) and config.get("bf16", {}).get("enabled", False):
        raise DeepSpeedConfigError(f"{path}: fp16.enabled and bf16.enabled are both true; enable one")

    for name, value in (("micro batch size", micro_batch_size), ("grad accum", grad_accum), ("world size", world_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _agree(path, config, "train_micro_batch_size_per_gpu", micro_batch_size,
           "train_micro_batch_size_per_gpu", "--micro-batch-size")
    _agree(path, config, "gradient_accumulation_steps", grad_accum, "gradient_accumulation_steps", "--grad-accum")
    global_batch = micro_batch_size * grad_accum * world_size
    if "train_batch_size" in config and config["train_batch_size"] != global_batch:
        raise DeepSpeedConfigError(
            f"{path}: train_batch_size is {config['train_batch_size']} but micro batch {micro_batch_size} x grad accum "
            f"{grad_accum} x world size {world_size} = {global_batch}; remove train_batch_size from the file "
            "(the recipe computes it) or change --micro-batch-size / --grad-accum"
        )
    config["train_batch_size"] = global_batch
    _agree(path, config, "gradient_clipping", gradient_clipping, "gradient_clipping", "--grad-clip")

    optimizer = config.get("optimizer")
    if optimizer is None:
        raise DeepSpeedConfigError(
            f"{path}: no optimizer section; the recipe lets DeepSpeed build the optimizer. Add "
            '"optimizer": {"type": "AdamW", "params": {"torch_adam": true, ...}} (see ds_configs/zero2.json)'
        )
    params = optimizer.setdefault("params", {})
    _agree(path, params, "lr", lr, "optimizer.params.lr", "--lr")
    _agree(path, params, "weight_decay", weight_decay, "optimizer.params.weight_decay", "--weight-decay")
    _require(path, params, "lr", "optimizer.params.lr", "--lr")

    scheduler = config.get("scheduler")
    if scheduler is None:
        raise DeepSpeedConfigError(
            f"{path}: no scheduler section, so --warmup-steps and the schedule length would be silently dropped. Add "
            '"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_type": "linear", "warmup_min_ratio": 0.0, '
            '"cos_min_ratio": 0.01}} (see ds_configs/zero2.json)'
        )
    kind = scheduler.get("type")
    if kind not in SCHEDULERS:
        raise DeepSpeedConfigError(
            f"{path}: scheduler.type is {kind!r}; the recipe fills the schedule of {', '.join(SCHEDULERS)} from "
            "--warmup-steps, --max-steps/--epochs and --lr. Use one of those (WarmupCosineLR is the recipe's)"
        )
    sched = scheduler.setdefault("params", {})
    step_fields, peak_is_param = SCHEDULERS[kind]
    if warmup_steps is not None and warmup_steps < 1:
        raise DeepSpeedConfigError(f"{path}: {kind} needs at least one warmup step; pass --warmup-steps 1 or more")
    flags = {"warmup_num_steps": (warmup_steps, "--warmup-steps"), "total_num_steps": (total_steps, "--max-steps (or --epochs)")}
    for field in step_fields:
        value, flag = flags[field]
        _agree(path, sched, field, value, f"scheduler.params.{field}", flag)
        _require(path, sched, field, f"scheduler.params.{field}", flag)
    if peak_is_param:  # these schedulers ramp to warmup_max_lr, not to the optimizer's lr
        _agree(path, sched, "warmup_max_lr", lr, "scheduler.params.warmup_max_lr", "--lr")
    return config


def _check_shapes(path: Path, config: dict[str, Any]) -> None:
    """Sections that must be JSON objects are objects (DeepSpeed calls .get on them)."""
    def refuse(field: str, value: Any) -> None:
        example = OBJECT_EXAMPLES.get(field, "{...}")
        raise DeepSpeedConfigError(f"{path}: \"{field}\" is {json.dumps(value)}, but it must be an object such as "
                                   f"{example}; fix that entry (see ds_configs/zero2.json)")

    for section in OBJECT_SECTIONS:
        if section in config and not isinstance(config[section], dict):
            refuse(section, config[section])
    for section in ("optimizer", "scheduler"):
        if section in config and "params" in config[section] and not isinstance(config[section]["params"], dict):
            refuse(f"{section}.params", config[section]["params"])
    for offload in ("offload_optimizer", "offload_param"):
        value = config.get("zero_optimization", {}).get(offload)
        if value is not None and not isinstance(value, dict):
            refuse(f"zero_optimization.{offload}", value)
