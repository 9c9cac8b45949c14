"""Per-step metrics: stage-N/metrics.jsonl, the sinks RUN.yaml's `training.report_to` names, and progress.

metrics.jsonl holds one JSON object per logged step (kind "train") or evaluation (kind "eval"),
with the stage's own `step`, the run's `global_step` (steps of the earlier stages of run_stages
added) and the wall-clock `time`, so TensorBoard and wandb curves continue across stages. A restarted stage
logs again from `first_logged_step`: the records an interrupted run logged from there on (after its last
checkpoint, or all of them when it had none: the step-0 eval is logged again) are dropped from metrics.jsonl
and purged from TensorBoard's view, so both read like one uninterrupted run. Progress is a tqdm bar on a
terminal and one plain line per log otherwise: a SLURM .out file gets no carriage-return bars.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from megaeeve.atomic import atomic_file
from megaeeve.log import STDERR, logger, on_terminal

log = logger(__name__)

SINKS = ("tensorboard", "wandb")


@dataclass(frozen=True)
class MetricsSettings:
    stage_dir: Path
    stage: int
    total_steps: int
    start_step: int  # resumed at (0: a fresh stage)
    step_offset: int  # steps of the run's earlier stages: global_step = step_offset + step
    report_to: tuple[str, ...]
    progress_bar: bool
    run_name: str
    wandb_project: str


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def first_logged_step(start_step: int) -> int:
    """The first step a (re)started stage logs: 0 (its step-0 eval) from scratch, else the one after the
    checkpoint it resumed from (that step's records and eval were logged before the checkpoint was saved)."""
    return start_step + 1 if start_step else 0


class JsonlSink:
    def __init__(self, path: Path, first_step: int) -> None:
        self.path = path
        self.kept = self._truncate(first_step)
        self.file = open(path, "a", encoding="utf-8")

    def _truncate(self, first_step: int) -> set[tuple[str, int]]:
        """Drop the records of steps >= `first_step` (the restarted run logs them again); returns the (kind,
        step) of those kept."""
        if not self.path.is_file():
            return set()
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        keep = [(line, record) for line, record in zip(lines, map(json.loads, lines)) if record["step"] < first_step]
        with atomic_file(self.path, "w") as f:
            f.write("".join(line + "\n" for line, _ in keep))
        return {(record["kind"], record["step"]) for _, record in keep}

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    skip = {"step", "global_step", "kind", "time"}
    return {f"{record['kind']}/{k}": v for k, v in record.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """Scalars by global step. `purge_step` hides the events an interrupted run wrote from that global step on
    (a SessionLog.START event that TensorBoard honours); each record is flushed, so a kill loses none."""

    def __init__(self, log_dir: Path, purge_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from megaeeve.errors import ConfigError

            raise ConfigError("training.report_to names tensorboard, which is not installed: "
                              "pip install 'megaeeve[tensorboard]'") from None

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, record["global_step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One wandb run per stage, grouped by run; its id is fixed by the stage directory, so a requeued stage
    resumes the same wandb run. WANDB_MODE=offline works without network (`wandb sync` later)."""

    def __init__(self, s: MetricsSettings) -> None:
        try:
            import wandb
        except ImportError:
            from megaeeve.errors import ConfigError

            raise ConfigError("training.report_to names wandb, which is not installed: pip install 'megaeeve[wandb]'") \
                from None
        run_id = hashlib.sha1(str(s.stage_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=s.wandb_project, group=s.run_name, name=f"{s.run_name} stage {s.stage}",
                              id=run_id, resume="allow", dir=str(s.stage_dir), config={"stage": s.stage})

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({**_scalars(record), "global_step": record["global_step"]})

    def close(self) -> None:
        self.run.finish()


class Progress:
    """A tqdm bar on a terminal; otherwise one plain line per logged step, with the ETA."""

    def __init__(self, s: MetricsSettings) -> None:
        self.s, self.started, self.bar = s, time.monotonic(), None
        if on_terminal():
            self.bar = tqdm(total=s.total_steps, initial=s.start_step, desc=f"stage {s.stage}", unit="step")

    def log(self, record: dict[str, Any]) -> None:
        if record["kind"] != "train":
            if self.bar is None:
                evals = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("eval_loss"))
                log.info(f"stage {self.s.stage} step {record['step']}: {evals}", extra=STDERR)
            return
        if self.bar is not None:
            self.bar.n = record["step"]
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            self.bar.refresh()
            return
        done = record["step"] - self.s.start_step
        eta = (time.monotonic() - self.started) / done * (self.s.total_steps - record["step"]) if done else 0.0
        log.info(f"stage {self.s.stage} step {record['step']}/{self.s.total_steps} loss {record['loss']:.4f} "
                 f"lr {record['lr']:.3g} tokens/s {record['tokens_per_s']:,.0f} "
                 f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", extra=STDERR)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Metrics:
    """Every logged record goes to each sink, on rank 0 only (`enabled`). A record whose kind and step the
    interrupted run logged before its checkpoint is not logged again: a stage resumed at its last step (stopped
    after its final checkpoint, before DONE) evaluates that step again."""

    def __init__(self, s: MetricsSettings, enabled: bool) -> None:
        self.s, self.sinks, self.logged = s, [], set()
        if not enabled:
            return
        s.stage_dir.mkdir(parents=True, exist_ok=True)
        first = first_logged_step(s.start_step)
        jsonl = JsonlSink(s.stage_dir / "metrics.jsonl", first)
        self.sinks.append(jsonl)
        self.logged = jsonl.kept
        if "tensorboard" in s.report_to:
            self.sinks.append(TensorBoardSink(s.stage_dir / "tensorboard", s.step_offset + first))
        if "wandb" in s.report_to:
            self.sinks.append(WandbSink(s))
        if s.progress_bar:
            self.sinks.append(Progress(s))

    def log(self, record: dict[str, Any]) -> None:
        if (record["kind"], record["step"]) in self.logged:
            return
        record = {**record, "global_step": self.s.step_offset + record["step"], "time": time.time()}
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
