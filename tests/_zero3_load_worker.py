"""Run by tests/test_model_zero3.py under torch.distributed.run (2 CPU ranks, gloo).

Loads a model directory under ZeRO-3 (load_model_dir with a stage-3 config), checks that every
parameter is partitioned and that the gathered weights, the buffers and the logits of a ZeRO-3
engine equal a plain load; then trains one step with the base rows frozen (EEVE stage 3): the new
rows' gradients match the plain model's and the base rows stay bitwise. Rank 0 writes a JSON verdict.
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
from megaeeve.model import load_model_dir, parameter_roles  # noqa: E402
from megaeeve.training.collectives import exit_rank  # noqa: E402

DS_CONFIG = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3},
             "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1, "torch_adam": True}}}


def full(param: torch.Tensor) -> torch.Tensor:
    with deepspeed.zero.GatheredParameters([param]):
        return param.data.clone()


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
    roles = parameter_roles(zero)
    for model in (zero, plain):
        for name, p in model.named_parameters():
            p.requires_grad_(roles[name] in ("input_added", "output_added"))
    before = {n: full(p) for n, p in zero.named_parameters()}
    engine, *_ = deepspeed.initialize(model=zero, config=DS_CONFIG,
                                      model_parameters=[p for p in zero.parameters() if p.requires_grad])
    base = plain.config.vocab_size - 9 - 7  # the test model: 7 new tokens, 9 padding ids (doubling as inputs)
    ids = torch.tensor([[plain.config.vocab_size - 1, base, base + 3, 17, base + 6, 5],
                        [base + 1, 900, 4, base + 2, 33, base + 5]])
    logits_zero, logits_plain = engine(ids).logits, plain(ids).logits
    if not torch.equal(logits_zero.detach(), logits_plain.detach()):
        problems.append(f"ZeRO-3 logits differ by {(logits_zero - logits_plain).abs().max().item()}")
    loss_zero = torch.nn.functional.cross_entropy(logits_zero[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss_plain = torch.nn.functional.cross_entropy(logits_plain[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    engine.backward(loss_zero)
    loss_plain.backward()
    for (name, p), (_, q) in zip(zero.named_parameters(), plain.named_parameters()):
        if q.requires_grad and not torch.allclose(deepspeed.utils.safe_get_full_grad(p), q.grad, atol=1e-6):
            problems.append(f"ZeRO-3 gradient of {name} differs from the plain model's")
    engine.step()
    for name, p in zero.named_parameters():
        changed = not torch.equal(full(p), before[name])
        if changed != p.requires_grad:
            problems.append(f"{name} ({roles[name]}) {'changed' if changed else 'did not change'} in a step")
    verdicts = [None] * world
    dist.all_gather_object(verdicts, {"rank": rank, "problems": problems,
                                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if rank == 0:
        Path(out).write_text(json.dumps(verdicts))


if __name__ == "__main__":
    main(*sys.argv[1:])
    # as train.py: no interpreter finalization, whose teardown of gloo's and DeepSpeed's threads now and then aborts
    # a rank whose work is done (SIGABRT, "terminate called without an active exception": one clean-clone CI run)
    exit_rank(0)
