"""A kill -9 at any moment, a checkpoint save included, costs at most the steps since the last complete checkpoint.

Real ranks of train.py (gloo, DeepSpeed ZeRO-3 on CPU) stop inside a save at a point named by the test hook
megaeeve.training.checkpoint.PAUSE_ENV; once every rank is idle (the paused one asleep, the others waiting in a
collective) one rank gets SIGKILL and the rest are killed as a launcher would. Each restart must resume from
the newest complete checkpoint, and the stage must end with the batches and the weights of an uninterrupted
run: final/ of both runs, and DeepSpeed's own zero_to_fp32 view of both last checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import (ds_config, engine_view, launch, make_stage0, metrics, read_log, run_config, train_stage,
                            wait, weights, write_prefix)

from megaeeve.training.checkpoint import COMPLETE, PAUSE_ENV, _newest_complete, _prune


@pytest.fixture(scope="module")
def corpus(module_tmp, phi2_tokenizer_dir, korean_split, english_docs):
    """A tiny Llama stage-0 over phi-2's tokenizer (uneven ZeRO partitions of its 50,295 base rows on 3
    ranks) and Korean + English datasets."""
    tmp = module_tmp("ckpt-kill")
    llama = make_stage0(tmp, "llama", phi2_tokenizer_dir)
    ko = write_prefix(tmp / "ko", llama, korean_split[0][:30])
    en = write_prefix(tmp / "en", llama, english_docs[:30])
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    return {"tmp": tmp, "model": llama, "sources": sources}


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of the whole process


def _kill_inside_save(args: list[str], world: int, log: Path, rank: int, step: int, point: str) -> None:
    """Run the stage until `rank` pauses at `point` of the save of `step`, wait until no rank uses CPU, kill -9
    that rank, then the others (as srun or torchrun do when a task dies)."""
    os.environ[PAUSE_ENV] = f"{rank}:{step}:{point}"
    try:
        procs = launch(args, world, log)
    finally:
        del os.environ[PAUSE_ENV]
    rank_log, deadline = Path(f"{log}.rank{rank}"), time.monotonic() + 600
    try:
        while f"pause: rank {rank} at {point} of step {step}" not in (rank_log.read_text() if rank_log.exists() else ""):
            assert all(p.poll() is None for p in procs), f"a rank ended before the pause:\n{read_log(log)}"
            assert time.monotonic() < deadline, f"no pause at {point} of step {step}:\n{read_log(log)}"
            time.sleep(0.05)
        ticks, still = None, 0
        while still < 10:  # 1 s without a CPU tick on any rank
            now = [_cpu_ticks(p.pid) for p in procs]
            still, ticks = (still + 1 if now == ticks else 0), now
            assert time.monotonic() < deadline, "the ranks never went idle"
            time.sleep(0.1)
        os.killpg(procs[rank].pid, signal.SIGKILL)
        time.sleep(1)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        wait(procs)


def _resumed_at(lines: list[str]) -> int | None:
    steps = [int(m.group(1)) for x in lines if (m := re.search(r"resumed at step (\d+)", x))]
    assert len(steps) <= 1, steps
    return steps[0] if steps else None


def _train_records(stage_dir: Path) -> list[tuple]:
    return [(r["step"], r["consumed_samples"], r["batch_checksum"], r["loss"])
            for r in metrics(stage_dir) if r["kind"] == "train"]


def _check_interrupted_run(corpus, name: str, stage: int, spec: dict, world: int, bf16: bool,
                           kills: list[tuple[int, int, str]], resumes: list[tuple[int | None, str | None]]) -> None:
    """Train `spec` as stage `stage` straight through, and again killed at each of `kills` (rank, step, point) and
    restarted to the end; `resumes` holds, for each launch of the second run, the step it resumed at and the
    checkpoint it reported incomplete. Both runs end with the same batches, final/ weights and zero_to_fp32 view."""
    tmp = corpus["tmp"]
    ds = ds_config(tmp / f"ds-{name}.json", micro=1, accum=1, bf16=bf16)
    training = {"eval_samples": 2, "checkpoint_every": 1, "keep_checkpoints": 1, "report_to": [],
                "progress_bar": False}
    runs = {}
    for label in ("straight", "killed"):
        runs[label] = tmp / f"{name}-{label}"
        run_config(tmp / f"{name}-{label}.yaml", runs[label], corpus["model"], corpus["sources"], {stage: spec},
                   run_stages=[stage], training=training)
    log = tmp / f"{name}-straight.log"
    assert train_stage(ds, tmp / f"{name}-straight.yaml", stage, log, world=world) == 0, read_log(log)

    args = ["--ds_config", str(ds), "--config", str(tmp / f"{name}-killed.yaml"), "--stage", str(stage)]
    ckpt = runs["killed"] / f"stage-{stage}" / "checkpoints"
    assert len(resumes) == len(kills) + 1
    for k, (resumed, incomplete) in enumerate(resumes):
        log = tmp / f"{name}-killed-{k}.log"
        if k < len(kills):
            _kill_inside_save(args, world, log, *kills[k])
        else:
            assert train_stage(ds, tmp / f"{name}-killed.yaml", stage, log, world=world) == 0, read_log(log)
        lines = Path(f"{log}.rank0").read_text().splitlines()
        assert _resumed_at(lines) == resumed, read_log(log)
        reported = [x for x in lines if "incomplete" in x]
        if incomplete:  # one line names the cut checkpoint and the one resumed from
            assert len(reported) == 1 and incomplete in reported[0] and f"step{resumed:08d}" in reported[0], reported
        else:
            assert not reported, reported
        if k < len(kills):
            assert not (runs["killed"] / f"stage-{stage}" / "DONE").exists()
            assert (ckpt / f"step{kills[k][1]:08d}").is_dir(), "the kill came before the save began"
    a_stage, b_stage = runs["straight"] / f"stage-{stage}", runs["killed"] / f"stage-{stage}"
    assert _train_records(b_stage) == _train_records(a_stage)
    assert [r[0] for r in _train_records(b_stage)] == list(range(1, spec["steps"] + 1))
    for a, b in ((weights(a_stage / "final"), weights(b_stage / "final")),
                 (engine_view(runs["straight"], stage), engine_view(runs["killed"], stage))):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_kill_inside_saves_of_a_distilling_lora_stage_in_bf16_on_3_ranks(corpus):
    """One stage that distils (objective distill) into LoRA adapters (PEFT, on q_proj/v_proj), bf16, 3 ranks, a
    checkpoint every step and only one kept (one run covers the three: each launch costs half a minute of the
    suite). Killed: rank 1 before its files of step 2 are written (rank 0's are, and DeepSpeed's own `latest`
    would name step 2 already), rank 2 halfway through its optimizer file of step 3, and rank 0 after marking
    step 4 (the last) complete but before `latest` (the restart takes step 4 and saves it again)."""
    spec = {"trainable": ["lora"], "lr": 1e-2, "steps": 4, "objective": "distill",
            "lora": {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}}
    kills = [(1, 2, "before-file-0"), (2, 3, "inside-file-1"), (0, 4, "before-latest")]
    resumes = [(None, None), (1, "step00000002"), (2, "step00000003"), (4, None)]
    _check_interrupted_run(corpus, "lora-distill", 8, spec, 3, True, kills, resumes)


def test_checkpoints_a_restart_skips_and_the_pruning_removes(tmp_path, capsys):
    """Checkpoint directories as saves, kills and copies leave them: the newest complete one is chosen, each newer
    one is reported on its own line with what is wrong, and pruning keeps the newest complete ones only."""
    def tag(step: int, files: dict[str, int], marked: dict[str, int] | None) -> None:
        d = tmp_path / f"step{step:08d}"
        d.mkdir()
        for name, size in files.items():
            (d / name).write_bytes(b"x" * size)
        if marked is not None:
            (d / COMPLETE).write_text(json.dumps({"step": step, "world_size": 2, "files": marked}))

    full = {"rank0.pt": 10, "rank1.pt": 20}
    tag(1, full, full)
    tag(2, full, full)
    tag(3, {"rank0.pt": 10, "rank1.pt": 7}, full)  # marked, then a file cut (a run directory copied in part)
    tag(4, {"rank0.pt": 10}, full)
    tag(5, full, None)  # every file, no marker: killed before rank 0 marked it
    assert _newest_complete(tmp_path) == "step00000002"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(x.endswith("; resuming from step00000002") for x in lines), lines
    assert "checkpoint step00000005 is incomplete (no COMPLETE marker" in lines[0]
    assert "step00000004 is incomplete (rank1.pt is missing" in lines[1]
    assert "step00000003 is incomplete (rank1.pt has 7 of its 20 bytes" in lines[2]
    (tmp_path / ".step00000000.removing").mkdir()  # a kill inside an earlier removal
    _prune(tmp_path, 2, "step00000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000001", "step00000002"]
    _prune(tmp_path, 1, "step00000002")
    assert [p.name for p in tmp_path.iterdir()] == ["step00000002"]
    assert _newest_complete(tmp_path) == "step00000002" and not capsys.readouterr().err
