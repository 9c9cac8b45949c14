"""What a training step costs: model FLOPs of a stage, the device's peak, peak memory.

MFU counts the work the stage really does. Every stage runs the whole forward. Gradients with
respect to activations flow back through the body only when something below the head trains
(new input rows, the body, or LoRA adapters inside the frozen body); weight gradients exist only for
trainable parameters. Stage 6
(everything trains) is the usual 6 N + 12 L h s per token; stage 2 (new output rows only) is
close to a forward pass.
"""

from __future__ import annotations

import resource
import sys
from typing import Collection, Mapping

import torch
from torch import nn

from megaeeve.stages import LORA

# Dense bf16/fp16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name (SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def full_numel(p: torch.Tensor) -> int:
    """Element count of a parameter, also when ZeRO-3 has partitioned it away (`ds_numel`)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _matmul_numel(model: nn.Module, roles: Mapping[str, str]) -> dict[str, int]:
    """Parameters that multiply: all but the input embedding, whose forward is a lookup and weight gradient a scatter."""
    return {n: full_numel(p) for n, p in model.named_parameters() if not roles[n].startswith("input_")}


def _attention_flops(model: nn.Module, seq_length: int) -> float:
    return 4.0 * model.config.num_hidden_layers * model.config.hidden_size * seq_length


def forward_flops_per_token(model: nn.Module, roles: Mapping[str, str], seq_length: int) -> float:
    """Forward FLOPs per token (a distilling stage's teacher): 2 N over the matmul parameters, plus attention's 4 L h s."""
    return 2.0 * sum(_matmul_numel(model, roles).values()) + _attention_flops(model, seq_length)


def flops_per_token(model: nn.Module, roles: Mapping[str, str], seq_length: int,
                    trainable: Collection[str]) -> float:
    """Model FLOPs per trained token of a stage that trains `trainable` (parameter names): the forward, the
    activation gradients where any trainable parameter lies below the output layer, the weight gradients."""
    matmul = _matmul_numel(model, roles)
    matmul_flops, attention = 2.0 * sum(matmul.values()), _attention_flops(model, seq_length)
    forward = matmul_flops + attention
    through_body = any(roles[n] in ("body", LORA) or roles[n].startswith("input_") for n in trainable)
    # Backward through attention differentiates both operands of QK^T and of AV: twice its forward.
    activation_grads = matmul_flops + 2.0 * attention if through_body else 0.0
    weight_grads = 2.0 * sum(v for n, v in matmul.items() if n in set(trainable))
    return forward + activation_grads + weight_grads


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense 16-bit peak (None on CPU or an unknown GPU: set training.peak_tflops)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory allocated by this process; on CPU, the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)
