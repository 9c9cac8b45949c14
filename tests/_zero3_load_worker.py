"""Run by tests/test_model_zero3.py under torch.distributed.run (2 CPU ranks, gloo).

Loads a model directory under ZeRO-3 (load_model_dir with a stage-3 config), checks that every
parameter is partitioned and that the gathered weights, the buffers and the logits of a ZeRO-3
engine equal a plain load; rank 0 writes a JSON verdict.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaeeve.model import load_model_dir  # noqa: E402

DS_CONFIG = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}


def main(model_dir: str, out: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    zero = load_model_dir(model_dir, ds_config=DS_CONFIG)
    plain = load_model_dir(model_dir)
    problems = []
    for (name, p), (_, q) in zip(zero.named_parameters(), plain.named_parameters()):
        if not hasattr(p, "ds_id") or p.ds_tensor.numel() > -(-q.numel() // world):
            problems.append(f"{name} is not partitioned")
        with deepspeed.zero.GatheredParameters([p]):
            if not torch.equal(p.data, q.data):
                problems.append(f"{name} differs from a plain load")
    for (name, b), (_, c) in zip(zero.named_buffers(), plain.named_buffers()):
        if not torch.equal(b, c):
            problems.append(f"buffer {name} differs from a plain load")
    engine, *_ = deepspeed.initialize(model=zero, config=DS_CONFIG)
    ids = torch.arange(0, 12).reshape(2, 6) * 4201 % plain.config.vocab_size
    with torch.no_grad():
        logits_zero, logits_plain = engine(ids).logits, plain(ids).logits
    if not torch.equal(logits_zero, logits_plain):
        problems.append(f"ZeRO-3 logits differ by {(logits_zero - logits_plain).abs().max().item()}")
    verdicts = [None] * world
    dist.all_gather_object(verdicts, {"rank": rank, "problems": problems,
                                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if rank == 0:
        Path(out).write_text(json.dumps(verdicts))


if __name__ == "__main__":
    main(*sys.argv[1:])
