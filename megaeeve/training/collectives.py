"""The one place (with model/partition.py) that asks torch.distributed where this process stands, and small
collectives on the accelerator's device (NCCL only reduces device tensors; gloo takes CPU ones).

The trainer learns its rank and world once, in its stage plan (megaeeve/training/plan.py), and hands them
down; `rank()` and `group_size()` serve the few places below that plan: the index cache (reached from data
builders that tools also call without any process group) and a ZeRO parameter's own process group.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist


def comm_device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def rank() -> int:
    """This process's global rank; 0 without a process group (single-process tools and tests)."""
    return dist.get_rank() if dist.is_initialized() else 0


def group_size(group: dist.ProcessGroup) -> int:
    """How many ranks `group` spans (a ZeRO-3 parameter's `ds_process_group`)."""
    return dist.get_world_size(group=group)


def all_reduce_values(values: list[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few numbers over all ranks (float64, so integer counts up to 2**53 stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def exit_rank(code: int) -> NoReturn:
    """Leave a rank program once everything it writes is written and closed: the process group destroyed,
    logs and streams flushed, then no interpreter finalization. Tearing down the C++ threads of gloo and
    DeepSpeed's CPU ops there now and then aborts a rank whose work has finished ("terminate called without
    an active exception", SIGABRT: seen once in ~170 CPU stage launches, and in a Trainer rank of
    bench/bench_vs_trainer.py after its checkpoint was saved)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
