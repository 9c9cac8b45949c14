"""Per-step metrics: stage-N/metrics.jsonl, TensorBoard (stage-N/tensorboard/) and a rank-0 tqdm bar.

metrics.jsonl holds one JSON object per logged step (kind "train") or evaluation (kind "eval").
On resume, records past the resumed step (logged by the interrupted run after its last
checkpoint) are dropped, so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from megaeeve.atomic import atomic_file


class Metrics:
    def __init__(self, stage_dir: Path, enabled: bool, tensorboard: bool, progress_bar: bool,
                 total_steps: int, start_step: int, stage: int) -> None:
        self.path = stage_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        stage_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(stage_dir / "tensorboard"))
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"stage {stage}", unit="step")

    def _truncate(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        with atomic_file(self.path, "w") as f:
            f.write("".join(line + "\n" for line in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            prefix = record["kind"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        if self.bar is not None and record["kind"] == "train":
            self.bar.n = record["step"]
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
