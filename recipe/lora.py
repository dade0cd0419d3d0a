"""LoRA through peft, in place (no PeftModel wrapper around the whole model), on any sub-module.

The model adapts its visual transformer and its decoder this way (`SignTranslationModel.lora_targets`).
`inject_adapter_in_model` keeps the module tree, so the model's state-dict names stay stable
(`decoder.layers.0.self_attn.q_proj.lora_A.default.weight`,
`sign_encoder.transformer.layers.0.self_attn.q_proj.base_layer.weight`) and a model built from a config
with LoRA loads its own checkpoints. peft freezes every non-adapter parameter of the module it adapts,
and nothing outside it. `merge_lora` folds the adapters into the base weights and removes them, which is
what the export does before `save_pretrained` so the published model has plain layers.
"""
from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


def apply_lora(module: nn.Module, r: int, alpha: int, dropout: float, target_modules: Sequence[str]) -> nn.Module:
    """Inject LoRA adapters into `module` (in place) and freeze its other parameters."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    return inject_adapter_in_model(config, module)


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the plain base layer back (in place)."""
    adapted = [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child_name, layer.get_base_layer())
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters counted once each (tied weights are one parameter)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
