"""Run by tests/test_partition.py under torch.distributed.run (CPU ranks, gloo).

Builds parameters of uneven sizes under deepspeed.zero.Init, sets each to 0, 1, ..., numel - 1 through
GatheredParameters, then compares `partition_of` with what DeepSpeed itself holds on each rank: the size of its
partition (`ds_tensor`) and the values in it, which say where the partition starts. Rank 0 writes the ranges
of every rank as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaeeve.model.partition import partition_of  # noqa: E402
from megaeeve.training.collectives import exit_rank  # noqa: E402

SHAPES = {"bias": (50295,), "matrix": (7, 3), "one": (1,), "five": (5,), "rows": (13, 4)}


def main(out: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    with deepspeed.zero.Init(config_dict_or_path={"train_micro_batch_size_per_gpu": 1,
                                                  "zero_optimization": {"stage": 3}}):
        module = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(s)) for k, s in SHAPES.items()})
    ranges, problems = {}, []
    for name, p in module.items():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            if dist.get_rank() == 0:
                p.data.copy_(torch.arange(p.numel(), dtype=p.dtype).view(p.shape))
        part = partition_of(p)
        held = p.ds_tensor.data  # DeepSpeed's own partition of this rank
        if part.size != held.numel():
            problems.append(f"{name}: partition size {part.size}, DeepSpeed holds {held.numel()}")
        if not torch.equal(held[: part.valid], torch.arange(part.start, part.stop, dtype=held.dtype)):
            problems.append(f"{name}: DeepSpeed holds {held[:5].tolist()}... where [{part.start}, {part.stop}) is")
        ranges[name] = [part.start, part.stop, p.ds_numel]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"ranges": ranges, "problems": problems})
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    exit_rank(0)  # as train.py: no interpreter finalization, whose teardown of gloo's threads now and then aborts
