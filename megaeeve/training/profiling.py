"""torch.profiler over chosen optimizer steps (`training.profile_steps`): where one step's time goes, per rank.

A profiled step writes, under STAGE_DIR/profile/:
  rank{r}-step{n}.trace.json  Chrome / Perfetto trace (chrome://tracing, ui.perfetto.dev)
  rank{r}-step{n}.ops.json    every operator's calls and self / total time (the device's too on a GPU), slowest first
  rank{r}-step{n}.txt         the same as torch.profiler's table, the 40 slowest by self time
Each appears atomically. Profiling slows the step it watches (its metrics.jsonl record says so by its
step_time_s), so tokens/s is read from the other steps. bench/bench_vs_trainer.py writes the same ops.json
for the Hugging Face Trainer and the bare loop, so one step of each can be compared operator by operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import torch
from torch.profiler import ProfilerActivity, profile

from megaeeve.atomic import atomic_file, write_json

TABLE_ROWS = 40


def op_summary(prof: profile) -> list[dict]:
    """Every operator of a finished profile: name, calls, self and total time in seconds (CPU, and the device's
    on a GPU), slowest self time first. The device's time leads the order when there is one."""
    rows = []
    for e in prof.key_averages():
        row = {"name": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
               "cpu_total_s": e.cpu_time_total / 1e6}
        device = getattr(e, "self_device_time_total", 0.0)
        if device:
            row["self_device_s"] = device / 1e6
        rows.append(row)
    return sorted(rows, key=lambda r: (r.get("self_device_s", 0.0), r["self_cpu_s"]), reverse=True)


def write_profile(prof: profile, out_dir: Path, name: str) -> None:
    """A finished profile's trace, operator summary and table under `out_dir` as NAME.trace.json, NAME.ops.json
    and NAME.txt (each atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / f".{name}.trace.json.tmp"
    prof.export_chrome_trace(str(trace))  # torch writes the file itself: renamed into place once complete
    trace.replace(out_dir / f"{name}.trace.json")
    ops = op_summary(prof)
    write_json(out_dir / f"{name}.ops.json", ops)
    device = any("self_device_s" in r for r in ops)
    table = prof.key_averages().table(sort_by="self_device_time_total" if device else "self_cpu_time_total",
                                      row_limit=TABLE_ROWS)
    with atomic_file(out_dir / f"{name}.txt", "w") as f:
        f.write(table + "\n")


def new_profile() -> profile:
    """A profiler over the CPU, and over the GPU where there is one."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=activities)


class StepProfiler:
    """Profiles each listed optimizer step on its own: `begin(n)` before step n's first micro batch, `end(n)`
    after its optimizer step. Steps not listed cost nothing."""

    def __init__(self, steps: Collection[int], out_dir: Path, rank: int) -> None:
        self.steps, self.out_dir, self.rank = frozenset(steps), out_dir, rank
        self.active: profile | None = None

    def begin(self, step: int) -> None:
        if step in self.steps:
            self.active = new_profile()
            self.active.__enter__()

    def end(self, step: int) -> None:
        """Stop and write the profile of `step` if it was profiled."""
        if self.active is None:
            return
        prof, self.active = self.active, None
        prof.__exit__(None, None, None)
        write_profile(prof, self.out_dir, f"rank{self.rank}-step{step}")
