"""The training loop of one stage: accumulation, logging, eval per dataset, checkpoints, preemption."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from megaeeve.data.sampler import micro_batch_indices
from megaeeve.training.collectives import all_reduce_values
from megaeeve.training.config import BatchShape
from megaeeve.training.data import StageData
from megaeeve.training.engine import restart_parameter_trace
from megaeeve.training.metrics import Metrics
from megaeeve.training.objectives import Objective
from megaeeve.training.profiling import StepProfiler
from megaeeve.training.signals import StopRequest
from megaeeve.training.throughput import peak_memory_gib


@dataclass
class LoopState:
    step: int  # optimizer steps done
    consumed_samples: int  # samples consumed by all ranks together


@dataclass
class LoopSettings:
    rank: int  # this process's, and how many train together (from the stage plan)
    world: int
    total_steps: int
    batch: BatchShape
    seq_length: int
    base_vocab_size: int  # ids >= this are new tokens
    flops_per_token: float  # this stage's model FLOPs (megaeeve.training.throughput)
    peak_tflops: float | None  # the device's peak, for MFU (None: not logged)
    log_every: int
    eval_every: int
    checkpoint_every: int


def evaluate(engine: Any, data: StageData, s: LoopSettings, objective: Objective) -> dict[str, float]:
    """Held-out metrics per dataset: `eval_loss_<name>` (next-token cross entropy, whatever the objective) and
    `eval_<term>_<name>` for the objective's other terms. Every rank runs the same number of forward passes
    (ZeRO-3 gathers parameters collectively); samples past the end are padding with weight 0."""
    rank, world, micro = s.rank, s.world, s.batch.micro
    engine.eval()
    out = {}
    with torch.no_grad():
        for name, valid in data.valid.items():
            n = len(valid)
            per_rank = -(-n // world)
            sums: dict[str, float] = {}
            count = 0.0
            for start in range(0, per_rank, micro):
                idx = [rank + world * j for j in range(start, min(start + micro, per_rank))]
                weight = torch.tensor([1.0 if i < n else 0.0 for i in idx], device=engine.device)
                tokens = torch.from_numpy(np.stack([valid[i if i < n else 0] for i in idx]))
                for term, values in objective(engine, tokens).metrics.items():
                    sums[term] = sums.get(term, 0.0) + float((values * weight).sum())
                count += float(weight.sum())
            terms = sorted(sums)
            count, *totals = all_reduce_values([count, *(sums[t] for t in terms)])
            for term, total in zip(terms, totals):
                out[f"eval_loss_{name}" if term == "lm" else f"eval_{term}_{name}"] = total / count
    engine.train()
    return out


def train(engine: Any, data: StageData, *, state: LoopState, s: LoopSettings, metrics: Metrics, stop: StopRequest,
          save: Callable[[LoopState], None], objective: Objective, profiler: StepProfiler) -> bool:
    """Train until `s.total_steps`; returns False if stopped early by a signal (after a checkpoint). An
    objective of several terms (distillation) also logs each as `<term>_loss`. `profiler` watches the steps it
    lists (training.profile_steps; none: it costs nothing)."""
    rank, world = s.rank, s.world
    if state.step == 0:  # where the stage starts from: the curves' first point
        metrics.log({"kind": "eval", "step": 0, **evaluate(engine, data, s, objective)})
        restart_parameter_trace(engine)  # else ZeRO-3 keeps the forward-only pass's release plan all stage
    engine.train()
    while state.step < s.total_steps:
        profiler.begin(state.step + 1)
        t0 = time.perf_counter()
        lr = float(engine.get_lr()[0])  # the lr this step uses
        loss_sum = tokens_sum = new_sum = extra_flops = 0.0
        checksum = 0
        term_sums: dict[str, float] = {}
        share_by_dataset = np.zeros(len(data.names))
        for _ in range(s.batch.grad_accum):
            idx = micro_batch_indices(state.consumed_samples, s.batch.micro, rank, world)
            items = [data.train[i] for i in idx]
            tokens = torch.from_numpy(np.stack([t for _, t in items]))
            for k, _ in items:
                share_by_dataset[k] += 1
            loss, n, per_sample, flops = objective(engine, tokens)
            engine.backward(loss)
            engine.step()
            state.consumed_samples += s.batch.micro * world
            loss_sum += loss.item() * n
            for term, values in per_sample.items():
                term_sums[term] = term_sums.get(term, 0.0) + float(values.sum())
            tokens_sum += n
            extra_flops += flops
            new_sum += float((tokens[:, :-1] >= s.base_vocab_size).sum())
            checksum = (checksum * 1_000_003 + int((tokens * torch.arange(1, tokens.shape[1] + 1)).sum())) % (2**31 - 1)
        state.step += 1
        terms = sorted(term_sums) if len(term_sums) > 1 else []
        reduced = all_reduce_values([loss_sum, tokens_sum, new_sum, float(checksum), extra_flops, *share_by_dataset,
                                     *(term_sums[t] for t in terms)])
        elapsed = time.perf_counter() - t0
        profiler.end(state.step)  # after the clock: writing the trace is not the step's time
        if state.step % s.log_every == 0 or state.step == s.total_steps:
            tokens_per_s = reduced[1] / elapsed
            step_flops = s.flops_per_token * reduced[1] + reduced[4]  # the student's, plus a teacher's forward
            tflops = step_flops / elapsed / world / 1e12
            record = {
                "kind": "train", "step": state.step, "consumed_samples": state.consumed_samples,
                "loss": reduced[0] / reduced[1], "lr": lr,
                "grad_norm": float(engine.get_global_grad_norm() or 0.0), "tokens_per_s": tokens_per_s,
                "flops": step_flops, "tflops_per_device": tflops, **({"mfu": tflops / s.peak_tflops} if s.peak_tflops else {}),
                "peak_memory_gib": peak_memory_gib(torch.device(engine.device)),
                "new_token_share": reduced[2] / reduced[1], "step_time_s": elapsed,
                "batch_checksum": int(reduced[3]),
                **{f"samples_{name}": int(reduced[5 + k]) for k, name in enumerate(data.names)},
                **{f"{term}_loss": total / reduced[1] * s.seq_length  # per-sample means over the step's samples
                   for term, total in zip(terms, reduced[5 + len(data.names):])},
            }
            metrics.log(record)
        if s.eval_every and state.step % s.eval_every == 0 and state.step < s.total_steps:
            metrics.log({"kind": "eval", "step": state.step, **evaluate(engine, data, s, objective)})
        if stop.agreed():
            save(state)
            return False
        if s.checkpoint_every and state.step % s.checkpoint_every == 0 and state.step < s.total_steps:
            save(state)
    return True
