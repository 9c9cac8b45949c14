"""LoRA adapters (PEFT) for stages that train the body, merged into plain weights at the hand-off.

PEFT's `inject_adapter_in_model` keeps the model's class and forward: each target Linear becomes a
LoRA layer holding the original as `base_layer` plus `lora_A` / `lora_B`. Its parameters then carry
`.base_layer.` in their names; `file_name` maps them back to the model directory's names. The
adapters are ordinary parameters that ZeRO-3 partitions at `deepspeed.initialize`; the base weights
stay frozen partitions. At the hand-off W + PEFT's own delta is written under W's name (`merged_weight`):
scaling * B A for a Linear, its transpose for a GPT-2-style Conv1D, whose weight is stored [in, out].
"""

from __future__ import annotations

import torch
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


class _Delta(nn.Module):
    """PEFT's delta of one LoRA layer as a forward, so that functional_call can run it on other adapter weights."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self) -> torch.Tensor:
        return self.layer.get_delta_weight(ADAPTER)


def merged_weight(layer: nn.Module, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`weight` (the layer's base weight as the model directory holds it) plus the adapter's delta, in fp32,
    computed by PEFT's own `get_delta_weight` with lora_A = `a` and lora_B = `b` (e.g. the fp32 masters a
    ZeRO-3 engine holds in place of the layer's partitioned parameters). PEFT knows each layer kind's layout
    (fan_in_fan_out for Conv1D), so the merge equals its `merge_and_unload`."""
    substitute = {f"layer.lora_A.{ADAPTER}.weight": a.float(), f"layer.lora_B.{ADAPTER}.weight": b.float()}
    delta = torch.func.functional_call(_Delta(layer), substitute, ())
    return (weight.float() + delta.to(weight.device)).contiguous()
