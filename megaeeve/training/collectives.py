"""Small collectives on the accelerator's device (NCCL only reduces device tensors; gloo takes CPU ones)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def comm_device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def all_reduce_values(values: list[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few numbers over all ranks (float64, so integer counts up to 2**53 stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()

