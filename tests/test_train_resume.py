"""Resume inside a stage: kill -9 mid-stage, then SIGUSR1 (requeue exit code), then finish. The batches after
each resume and the final weights equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import (ds_config, launch, make_stage0, metrics, read_log, run_config, train_stage, wait, weights,
                            write_prefix)

from megaeeve.training.signals import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow
STEPS = 6


def _wait_for_step(stage_dir: Path, step: int, procs, timeout: float = 120) -> None:
    path = stage_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "the run ended before it could be interrupted"
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
            if any(r["kind"] == "train" and r["step"] >= step for r in lines):
                return
        time.sleep(0.02)
    raise TimeoutError(f"step {step} never logged in {path}")


def _wait_for_resume(log: Path, procs, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "the resumed run ended early"
        match = re.search(r"resumed at step (\d+)", log.read_text() if log.exists() else "")
        if match:
            return int(match.group(1))
        time.sleep(0.02)
    raise TimeoutError(f"no resume message in {log}")


def test_kill_and_signal_then_resume_match_uninterrupted(tmp_path, gpt2_tokenizer_dir, korean_split, english_docs):
    model = make_stage0(tmp_path, "llama", gpt2_tokenizer_dir)
    ko = write_prefix(tmp_path / "ko", model, korean_split[0][:40])
    en = write_prefix(tmp_path / "en", model, english_docs[:40])
    sources = [{"prefix": str(ko), "weight": 0.6, "name": "ko"}, {"prefix": str(en), "weight": 0.4, "name": "en"}]
    ds = ds_config(tmp_path / "ds.json")

    def config(name: str) -> Path:
        return run_config(tmp_path / f"{name}.yaml", tmp_path / name, model, sources, {6: {"steps": STEPS}},
                          run_stages=[6], training={"eval_samples": 4, "checkpoint_every": 2, "progress_bar": False})

    assert train_stage(ds, config("straight"), 6, tmp_path / "straight.log") == 0

    cfg = config("interrupted")
    stage_dir = tmp_path / "interrupted" / "stage-6"
    args = ["--ds_config", str(ds), "--config", str(cfg), "--stage", "6"]
    procs = launch(args, log=tmp_path / "killed.log")
    _wait_for_step(stage_dir, 3, procs)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
    wait(procs)
    assert not (stage_dir / "DONE").exists()

    procs = launch(args, log=tmp_path / "signalled.log")
    resumed = _wait_for_resume(tmp_path / "signalled.log.rank0", procs)
    assert resumed in (2, 4)  # the last checkpoint (every 2 steps) before the kill
    _wait_for_step(stage_dir, resumed + 1, procs)
    procs[1].send_signal(signal.SIGUSR1)  # one rank only: the ranks must agree to stop together
    assert wait(procs) == [REQUEUE_EXIT_CODE] * 2, read_log(tmp_path / "signalled.log")
    assert not (stage_dir / "DONE").exists()

    assert train_stage(ds, cfg, 6, tmp_path / "finished.log") == 0
    assert "resumed at step" in read_log(tmp_path / "finished.log")

    def train_records(d: Path) -> list[tuple]:
        return [(r["step"], r["consumed_samples"], r["batch_checksum"], r["loss"])
                for r in metrics(d) if r["kind"] == "train"]

    straight = tmp_path / "straight" / "stage-6"
    assert train_records(stage_dir) == train_records(straight)
    assert [r[0] for r in train_records(stage_dir)] == list(range(1, STEPS + 1))
    a, b = weights(straight / "final"), weights(stage_dir / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
