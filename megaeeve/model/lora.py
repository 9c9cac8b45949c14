"""LoRA adapters (PEFT) for stages that train the body, merged into plain weights at the hand-off.

PEFT's `inject_adapter_in_model` keeps the model's class and forward: each target Linear becomes a
LoRA layer holding the original as `base_layer` plus `lora_A` / `lora_B`. Its parameters then carry
`.base_layer.` in their names; `file_name` maps them back to the model directory's names. The
adapters are ordinary parameters that ZeRO-3 partitions at `deepspeed.initialize`; the base weights
stay frozen partitions. At the hand-off W + scaling * B A is written under W's name.
"""

from __future__ import annotations

from torch import nn

from megaeeve.stages import LORA, LoraSpec

ADAPTER = "default"


def add_lora(model: nn.Module, spec: LoraSpec) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Weight name in the model directory (e.g. model.layers.0.self_attn.q_proj.weight) -> its LoRA layer."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is an optional extra: without it there are no LoRA layers
        return {}
    return {f"{prefix}.weight": m for prefix, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_roles(model: nn.Module) -> dict[str, str]:
    """Parameter name -> "lora" for every adapter parameter."""
    roles = {}
    for path, layer in lora_layers(model).items():
        prefix = path.removesuffix(".weight")
        for part in ("lora_A", "lora_B"):
            for name, _ in getattr(layer, part).named_parameters():
                roles[f"{prefix}.{part}.{name}"] = LORA
    return roles


def file_name(param_name: str) -> str:
    """The model directory's name of a parameter (a LoRA layer's base weight carries `.base_layer.`)."""
    return param_name.replace(".base_layer.", ".")
