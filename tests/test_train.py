"""The seven-stage trainer end to end: 2 ranks, gloo, real DeepSpeed ZeRO-3 engines, tiny Phi and Llama models.

One chained run per architecture (module-scoped) serves every assertion about it; the Phi chain's stage 6
is also the uninterrupted reference of the kill -9 / SIGUSR1 resume test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import (REPO, TRAIN, check_stage, ds_config, engine_view, launch, make_stage0, metrics, read_log,
                            roles_of, run_config, split_model_on_meta, train_stage, wait, weights,
                            write_prefix)

from megaeeve.model import read_model_meta
from megaeeve.training.signals import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(module_tmp, phi2_tokenizer_dir, korean_split, english_docs):
    """Stage-0 models over phi-2's tokenizer (50,295 base ids: uneven ZeRO partitions on 2 and 3 ranks) and
    Korean + English datasets tokenized with the expanded tokenizer (the same for both models)."""
    tmp = module_tmp("train")
    phi = make_stage0(tmp, "phi", phi2_tokenizer_dir)
    llama = make_stage0(tmp, "llama", phi2_tokenizer_dir)
    ko = write_prefix(tmp / "ko", phi, korean_split[0][:40])
    en = write_prefix(tmp / "en", phi, english_docs[:40])
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    return {"tmp": tmp, "phi": phi, "llama": llama, "sources": sources, "ds": ds_config(tmp / "ds.json"),
            "ds_bf16": ds_config(tmp / "ds_bf16.json", bf16=True), "chains": {}}


RESUME_STAGE, RESUME_STEPS = 6, 6  # the reference chain's stage 6 is also the uninterrupted run of the resume test
REFERENCE = ("phi", "fp32", 2)  # the chain the metrics, export, refusal and resume tests read
TRAINING = {"eval_samples": 4, "checkpoint_every": 2, "progress_bar": True, "peak_tflops": 0.5,
            "report_to": ["tensorboard"], "profile_steps": [2]}
# Every other cell: one step a stage, the checkpoint at the end only, final/ in shards of 1 MiB (written by every rank).
QUICK = {"eval_samples": 2, "checkpoint_every": 0, "progress_bar": False, "report_to": [], "handoff_shard_mb": 1}
CELLS = [(arch, precision, world) for arch in ("phi", "llama") for precision in ("fp32", "bf16") for world in (2, 3)]
CHECKPOINTED = ("llama", "bf16", 3)  # activation checkpointing (non-reentrant) with frozen parameters under ZeRO-3


def _chain(corpus, cell: tuple[str, str, int]) -> dict:
    """All seven stages of one cell, run once per module and shared by every test that reads it."""
    if cell in corpus["chains"]:
        return corpus["chains"][cell]
    arch, precision, world = cell
    tmp, name, stages = corpus["tmp"], "-".join(map(str, cell)), list(range(1, 8))
    run_dir = tmp / f"run-{name}"
    if cell == REFERENCE:
        budgets, training = {s: {"steps": RESUME_STEPS if s == RESUME_STAGE else 2} for s in stages}, TRAINING
    else:
        budgets = {s: {"steps": 1} for s in stages}
        training = {**QUICK, "activation_checkpointing": cell == CHECKPOINTED}
    cfg = run_config(tmp / f"{name}.yaml", run_dir, corpus[arch], corpus["sources"], budgets, run_stages=stages,
                     training=training)
    bf16 = precision == "bf16"
    for s in stages:
        log = tmp / f"{name}-stage{s}.log"
        code = train_stage(corpus["ds_bf16" if bf16 else "ds"], cfg, s, log, world=world)
        assert code == 0, read_log(log)
    corpus["chains"][cell] = {"run_dir": run_dir, "cfg": cfg, "stages": stages, "model": corpus[arch],
                              "roles": roles_of(corpus[arch]), "bf16": bf16, "world": world}
    return corpus["chains"][cell]


@pytest.fixture(scope="module", params=CELLS, ids=["-".join(map(str, c)) for c in CELLS])
def chain(request, corpus):
    return _chain(corpus, request.param)


@pytest.fixture(scope="module")
def phi_chain(corpus):
    return _chain(corpus, REFERENCE)


@pytest.mark.parametrize("stage", range(1, 8))
def test_stage_trains_exactly_its_roles(chain, stage):
    check_stage(chain, stage)


def test_metrics_and_markers(phi_chain):
    stage_dir = phi_chain["run_dir"] / "stage-5"
    records = metrics(stage_dir)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert [r["step"] for r in metrics(phi_chain["run_dir"] / "stage-6") if r["kind"] == "train"] == list(range(1, 7))
    for r in train:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "flops", "tflops_per_device", "new_token_share",
                    "peak_memory_gib"):
            assert r[key] > 0, key
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 0.5)  # training.peak_tflops: 0.5
        assert r["samples_ko"] + r["samples_en"] == 8
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2]  # where the stage starts from, and its end
    assert {"eval_loss_ko", "eval_loss_en"} <= set(evals[-1])
    # Steps continue across stages for TensorBoard and wandb: stages 1-4 took 2 steps each.
    assert [r["global_step"] for r in records] == [8 + r["step"] for r in records]
    assert any((stage_dir / "tensorboard").iterdir())
    # stderr is no terminal here (as in a SLURM .out file): plain progress lines, no carriage returns.
    log = (phi_chain["cfg"].parent / "phi-fp32-2-stage5.log.rank0").read_text()
    assert "stage 5 step 2/2 loss" in log and "ETA" in log and "\r" not in log
    assert (stage_dir / "DONE").is_file()


def test_profiled_step_writes_trace_and_operator_times_on_every_rank(phi_chain):
    """training.profile_steps: [2]: step 2 of each stage is profiled on both ranks, step 1 is not; the operator
    summary holds the step's real work (matmuls, the backward, the ZeRO-3 gathers' collectives)."""
    profile = phi_chain["run_dir"] / "stage-5" / "profile"
    names = sorted(p.name for p in profile.iterdir())
    assert names == sorted(f"rank{r}-step2.{kind}" for r in (0, 1) for kind in ("ops.json", "trace.json", "txt"))
    for rank in (0, 1):
        ops = json.loads((profile / f"rank{rank}-step2.ops.json").read_text())
        by_name = {o["name"]: o for o in ops}
        assert {"aten::mm", "aten::addmm"} & set(by_name) and any("backward" in n.lower() for n in by_name)
        assert any(n.startswith("c10d::") or "all_gather" in n for n in by_name)  # ZeRO-3's gathers
        assert all(o["calls"] >= 1 and o["cpu_total_s"] >= o["self_cpu_s"] >= 0 for o in ops)
        selfs = [o["self_cpu_s"] for o in ops]
        assert selfs == sorted(selfs, reverse=True) and sum(selfs) > 0
        trace = json.loads((profile / f"rank{rank}-step2.trace.json").read_text())
        assert any(e.get("name") == "aten::mm" or e.get("name") == "aten::addmm" for e in trace["traceEvents"])
        assert "Self CPU" in (profile / f"rank{rank}-step2.txt").read_text()


def test_step0_evaluation_leaves_zero3_prefetching_whole_steps(phi_chain):
    """Each stage evaluates at step 0, a forward-only pass before its first backward. DeepSpeed 0.19.8 memoises
    the release plan of that forward-only trace and kept it all stage: every parameter was released after the
    forward and gathered again module by module in the backward (SmolLM2 stage 6: 552 all_gathers a step instead
    of 6). With the trace restarted after the evaluation (megaeeve.training.engine.restart_parameter_trace), the
    profiled step 2 of every stage gathers in a few coalesced calls: fewer than the modules that hold parameters."""
    model = split_model_on_meta(phi_chain["model"])
    holders = sum(1 for m in model.modules() if any(True for _ in m.parameters(recurse=False)))
    for stage in phi_chain["stages"]:
        assert [r["step"] for r in metrics(phi_chain["run_dir"] / f"stage-{stage}") if r["kind"] == "eval"][0] == 0
        ops = json.loads((phi_chain["run_dir"] / f"stage-{stage}" / "profile" / "rank0-step2.ops.json").read_text())
        gathers = sum(o["calls"] for o in ops if o["name"] == "gloo:all_gather")
        assert 0 < gathers < holders, f"stage {stage}: {gathers} all_gathers in step 2, {holders} modules hold parameters"


def test_final_export_loads_in_plain_transformers(phi_chain, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megaeeve.model import export_hf

    final = phi_chain["run_dir"] / "stage-7" / "final"
    with pytest.raises(OSError, match="model.safetensors"):  # final/ holds split tensors: refused, never half-loaded
        AutoModelForCausalLM.from_pretrained(str(final))
    out = export_hf(final, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("대한민국 헌법 제1조", return_tensors="pt").input_ids
    meta = read_model_meta(final)
    assert (ids >= meta.base_vocab_size).any()
    split = weights(final)
    merged = model.get_input_embeddings().weight
    assert torch.equal(merged[meta.base_vocab_size:meta.vocab_size], split["model.embed_tokens.added"])
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 3
    # Every model directory follows the umask (safetensors writes 0600: teammates could not read a run).
    mask = os.umask(0o022)
    os.umask(mask)
    for directory in (phi_chain["model"], final, out):
        for path in [directory, *directory.rglob("*")]:
            want = (0o777 if path.is_dir() else 0o666) & ~mask
            assert path.stat().st_mode & 0o777 == want, f"{path}: {oct(path.stat().st_mode & 0o777)}"


def test_completed_stage_and_missing_predecessor_are_refused(phi_chain, corpus, tmp_path):
    code = train_stage(corpus["ds"], phi_chain["cfg"], 3, tmp_path / "again.log", world=1)
    assert code == 2 and "--overwrite" in read_log(tmp_path / "again.log")
    fresh = run_config(tmp_path / "fresh.yaml", tmp_path / "fresh-run", corpus["phi"], corpus["sources"], {})
    code = train_stage(corpus["ds"], fresh, 2, tmp_path / "fresh.log", world=1)
    assert code == 2 and "no DONE" in read_log(tmp_path / "fresh.log")


def test_dry_run_lists_trainable_parameters(corpus, tmp_path):
    cfg = run_config(tmp_path / "dry.yaml", tmp_path / "dry-run", corpus["phi"], corpus["sources"], {})
    out = subprocess.run([sys.executable, str(TRAIN), "--ds_config", str(corpus["ds"]), "--config", str(cfg),
                          "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    added = weights(corpus["phi"])["model.embed_tokens.added"].numel()
    assert f"input_added      {added:>15,}" in out.stdout
    assert out.stdout.count("\nstage ") == 7
    assert not (tmp_path / "dry-run").exists()


def _wait_for_step(stage_dir: Path, step: int, procs, timeout: float = 600) -> None:
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


def _wait_for_resume(log: Path, procs, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "the resumed run ended early"
        match = re.search(r"resumed at step (\d+)", log.read_text() if log.exists() else "")
        if match:
            return int(match.group(1))
        time.sleep(0.02)
    raise TimeoutError(f"no resume message in {log}")


def test_kill_and_signal_then_resume_match_uninterrupted(phi_chain, corpus, tmp_path):
    """Stage 6 again from the chain's stage-5 weights: killed with -9, resumed and stopped by SIGUSR1 (exit 99),
    resumed to the end. Its batches and final weights equal the chain's uninterrupted stage 6."""
    ds = corpus["ds"]
    cfg = run_config(tmp_path / "interrupted.yaml", tmp_path / "interrupted",
                     phi_chain["run_dir"] / f"stage-{RESUME_STAGE - 1}" / "final", corpus["sources"],
                     {RESUME_STAGE: {"steps": RESUME_STEPS}}, run_stages=[RESUME_STAGE], training=TRAINING)
    stage_dir = tmp_path / "interrupted" / f"stage-{RESUME_STAGE}"
    args = ["--ds_config", str(ds), "--config", str(cfg), "--stage", str(RESUME_STAGE)]
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

    assert train_stage(ds, cfg, RESUME_STAGE, tmp_path / "finished.log") == 0
    assert "resumed at step" in read_log(tmp_path / "finished.log")

    def train_records(d: Path) -> list[tuple]:
        return [(r["step"], r["consumed_samples"], r["batch_checksum"], r["loss"])
                for r in metrics(d) if r["kind"] == "train"]

    straight = phi_chain["run_dir"] / f"stage-{RESUME_STAGE}"
    assert train_records(stage_dir) == train_records(straight)
    assert [r[0] for r in train_records(stage_dir)] == list(range(1, RESUME_STEPS + 1))
    a, b = weights(straight / "final"), weights(stage_dir / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_restart_before_the_first_checkpoint_logs_each_step_once(corpus, tmp_path):
    """A stage killed (-9) before its first checkpoint starts again at step 0: metrics.jsonl and TensorBoard then
    hold the step-0 eval and each step once, as an uninterrupted run does (the step-0 eval was kept twice). So
    does a stage resumed at its last step, whose final eval runs again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = 6
    cfg = run_config(tmp_path / "restart.yaml", tmp_path / "restart", corpus["phi"], corpus["sources"],
                     {1: {"steps": steps}}, run_stages=[1],
                     training={**QUICK, "checkpoint_every": 0, "report_to": ["tensorboard"]})
    stage_dir = tmp_path / "restart" / "stage-1"
    procs = launch(["--ds_config", str(corpus["ds"]), "--config", str(cfg), "--stage", "1"], log=tmp_path / "killed.log")
    _wait_for_step(stage_dir, 2, procs)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
    wait(procs)

    def tensorboard_steps(tag: str) -> list[int]:
        events = EventAccumulator(str(stage_dir / "tensorboard"))
        events.Reload()
        return [e.step for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []

    assert not (stage_dir / "checkpoints" / "latest").exists()  # killed before any checkpoint
    assert tensorboard_steps("eval/eval_loss_ko") == [0]  # the killed run's events are on disk
    assert train_stage(corpus["ds"], cfg, 1, tmp_path / "restarted.log") == 0
    assert "resumed at step" not in read_log(tmp_path / "restarted.log")
    records = metrics(stage_dir)
    assert [(r["kind"], r["step"]) for r in records] == [("eval", 0), *(("train", s) for s in range(1, steps + 1)),
                                                         ("eval", steps)]
    assert tensorboard_steps("eval/eval_loss_ko") == [0, steps]
    assert tensorboard_steps("train/loss") == list(range(1, steps + 1))
    # Stopped after its final checkpoint, before DONE: resumed at its last step, it evaluates that step again.
    shutil.rmtree(stage_dir / "final")
    (stage_dir / "DONE").unlink()
    assert train_stage(corpus["ds"], cfg, 1, tmp_path / "resumed.log") == 0
    assert f"resumed at step {steps}" in read_log(tmp_path / "resumed.log")
    assert metrics(stage_dir) == records
    assert tensorboard_steps("eval/eval_loss_ko") == [0, steps]


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """train.py's main in this process (dry runs build nothing distributed); env changes are undone after."""
    from megaeeve.train import main

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("model, total, stage1", [
    ("phi-2", 2_819_340_864, 8_649 * 2_560),  # 50,295 base + 8,649 new ids = 58,944, hidden 2560, 32 layers
    ("solar-10.7b", 10_804_924_416, 8_960 * 4_096),  # 32,000 + 8,960 = 40,960, hidden 4096, 48 layers
    # Published parameter counts, then 8,960 new rows on each side: Llama-3.1-8B 8,030,261,248 (128,256 rows);
    # Qwen2.5-7B 7,615,616,512 (152,064 rows, 151,665 tokens: the 399 padding rows go); Gemma-2-9B 9,241,705,984
    # with tied embeddings (the untied head adds 256,000 rows).
    ("llama-3.1-8b", 8_030_261_248 + 2 * 8_960 * 4_096, 8_960 * 4_096),
    ("qwen2.5-7b", 7_615_616_512 + 2 * (151_665 + 8_960 - 152_064) * 3_584, 8_960 * 3_584),
    ("gemma-2-9b", 9_241_705_984 + (256_000 + 2 * 8_960) * 3_584, 8_960 * 3_584),
])
def test_dry_run_plans_the_real_models(monkeypatch, capsys, model, total, stage1):
    code, out, err = _main(monkeypatch, capsys, "--dry-run", "--ds_config", str(REPO / "ds_configs" / "zero3.json"),
                           "--model", str(REPO / "configs" / "models" / model), "--world-size", "8", "64")
    assert code == 0, err
    assert f"{total:,} parameters; planned for 8, 64 rank(s)" in out
    assert out.count("\nstage ") == 7
    stage_1 = out.split("\nstage 1:")[1].split("\nstage 2:")[0]
    assert f"trainable {stage1:,} of {total:,}" in stage_1
    per_rank_8 = stage1 * 12 / 8 / 2**20  # fp32 master + two Adam moments, split over 8 ranks
    assert f"8 ranks: {per_rank_8:,.1f} MiB per rank" in stage_1
    stage_6 = out.split("\nstage 6:")[1].split("\nstage 7:")[0]
    assert f"8 ranks: {total * 12 / 8 / 2**30:,.2f} GiB per rank" in stage_6


def test_dry_run_checks_data_ds_config_and_stage(monkeypatch, capsys, corpus, tmp_path):
    cfg = run_config(tmp_path / "dry.yaml", tmp_path / "dry-run", corpus["phi"], corpus["sources"], {})
    dry = ("--dry-run", "--ds_config", str(corpus["ds"]), "--config", str(cfg))
    code, out, err = _main(monkeypatch, capsys, *dry, "--world-size", "2", "3")
    assert code == 0 and "checks passed" in out and "warning" not in err, err

    short = run_config(tmp_path / "short.yaml", tmp_path / "short-run", corpus["phi"], corpus["sources"],
                       {1: {"tokens": 5_000, "warmup_ratio": 0.05}}, run_stages=[1])
    code, _, err = _main(monkeypatch, capsys, "--dry-run", "--ds_config", str(corpus["ds"]), "--config", str(short),
                         "--world-size", "8")
    tokens_per_step = 2 * 2 * 8 * 32  # micro x accumulation x ranks x seq_length
    steps = -(-5_000 // tokens_per_step)
    assert code == 0 and f"stage 1: {steps} optimizer step(s) at 8 rank(s) ({tokens_per_step:,} tokens a step)" in err
    assert "rounds to no warmup step" in err

    with_lr = tmp_path / "with_lr.json"  # the run config owns learning rates: a ds_config lr is only a warning
    ds = json.loads(corpus["ds"].read_text())
    ds["optimizer"]["params"]["lr"] = 3e-4
    with_lr.write_text(json.dumps(ds))
    code, _, err = _main(monkeypatch, capsys, "--dry-run", "--ds_config", str(with_lr), "--config", str(cfg))
    assert code == 0 and "optimizer.params.lr = 0.0003 is ignored" in err

    code, _, err = _main(monkeypatch, capsys, *dry, "--stage", "9")
    assert code == 2 and "stage 9" in err and "Traceback" not in err

    auto = tmp_path / "auto.json"
    auto.write_text(json.dumps({**json.loads(corpus["ds"].read_text()), "gradient_accumulation_steps": "auto"}))
    code, _, err = _main(monkeypatch, capsys, "--dry-run", "--ds_config", str(auto), "--config", str(cfg))
    assert code == 2 and "gradient_accumulation_steps" in err and "auto" in err

    bad = tmp_path / "short"  # a copy of the Korean dataset whose .bin was cut short
    ko = Path(corpus["sources"][0]["prefix"])
    bad.with_suffix(".idx").write_bytes(ko.with_suffix(".idx").read_bytes())
    bad.with_suffix(".bin").write_bytes(ko.with_suffix(".bin").read_bytes()[:-10])
    cut = run_config(tmp_path / "cut.yaml", tmp_path / "cut-run", corpus["phi"],
                     [{"prefix": str(bad), "weight": 1.0, "name": "ko"}], {}, run_stages=[1])
    code, _, err = _main(monkeypatch, capsys, "--dry-run", "--ds_config", str(corpus["ds"]), "--config", str(cut))
    assert code == 2 and str(bad) in err and "Traceback" not in err

    # The real run: one clean line and exit 2 as well, not a traceback from every rank.
    assert train_stage(corpus["ds"], cut, 1, tmp_path / "cut.log", world=1) == 2
    log = read_log(tmp_path / "cut.log")
    assert f"error: {bad}.bin" in log and "Traceback" not in log


def test_rank_without_peers_stops_naming_the_rendezvous(corpus, tmp_path):
    """Rank 0 of 2 started alone (the srun path, its peer died before the rendezvous) gives up after
    training.dist_timeout_s with a message naming MASTER_ADDR and MASTER_PORT, not after torch's 30 minutes."""
    cfg = run_config(tmp_path / "alone.yaml", tmp_path / "alone", corpus["phi"], corpus["sources"],
                     {1: {"steps": 1}}, run_stages=[1], training={"dist_timeout_s": 5, "progress_bar": False})
    start = time.monotonic()
    procs = launch(["--ds_config", str(corpus["ds"]), "--config", str(cfg), "--stage", "1"], world=2,
                   log=tmp_path / "alone.log", ranks=[0])
    assert wait(procs, timeout=120) == [2]
    assert time.monotonic() - start < 90
    log = read_log(tmp_path / "alone.log")
    assert "MASTER_ADDR=127.0.0.1 MASTER_PORT=" in log and "dist_timeout_s" in log and "Traceback" not in log


def test_wandb_sink_works_offline(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = run_config(tmp_path / "wandb.yaml", tmp_path / "run", corpus["phi"], corpus["sources"], {1: {"steps": 1}},
                     run_stages=[1], training={"report_to": ["wandb"], "progress_bar": False, "eval_samples": 2})
    assert train_stage(corpus["ds"], cfg, 1, tmp_path / "wandb.log", world=1) == 0, read_log(tmp_path / "wandb.log")
    runs = list((tmp_path / "run" / "stage-1" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_lora_stage_merges_its_adapters_into_the_frozen_body(corpus, tmp_path):
    """A custom stage training LoRA adapters (PEFT) on q_proj/v_proj of the tied Llama, 2 ranks: the base weights
    stay bitwise frozen in the engine (DeepSpeed's zero_to_fp32 view), only the adapters hold Adam state, and
    final/ holds plain weights W + (alpha / r) B A computed from the engine's adapters."""
    lora = {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
    cfg = run_config(tmp_path / "lora.yaml", tmp_path / "run", corpus["llama"], corpus["sources"],
                     {8: {"trainable": ["lora"], "lr": 1e-2, "steps": 2, "lora": lora}}, run_stages=[8],
                     training={"eval_samples": 2, "checkpoint_every": 0, "report_to": [], "progress_bar": False})
    assert train_stage(corpus["ds"], cfg, 8, tmp_path / "lora.log") == 0, read_log(tmp_path / "lora.log")
    before, after = weights(corpus["llama"]), weights(tmp_path / "run" / "stage-8" / "final")
    view = engine_view(tmp_path / "run", 8)
    assert set(after) == set(before)
    merged = 0
    for name in before:
        module = name.removesuffix(".weight")
        if not module.endswith(("q_proj", "v_proj")):
            assert torch.equal(after[name], before[name]), name
            continue
        assert torch.equal(view[f"{module}.base_layer.weight"], before[name]), f"{name} moved under LoRA"
        a, b = view[f"{module}.lora_A.default.weight"], view[f"{module}.lora_B.default.weight"]
        assert b.abs().sum() > 0  # B starts at zero: training moved it
        torch.testing.assert_close(after[name], before[name] + (8.0 / 4) * (b @ a), rtol=0, atol=1e-6)
        merged += 1
    assert merged == 2 * 2  # two layers, two target modules each
    ckpt = tmp_path / "run" / "stage-8" / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    states = torch.load(ckpt / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    optimized = {n for shapes in states["param_shapes"] for n in shapes}
    assert optimized and all(".lora_A." in n or ".lora_B." in n for n in optimized)


def test_sharded_hand_off_equals_the_single_file(corpus, tmp_path):
    """Stage 4 (all output rows: phi-2's 50,295-row bias splits unevenly) on 3 ranks, handed off in 1 MiB shards
    that every rank writes, and as one file: the same tensors, bit for bit."""
    from megaeeve.model.weights import INDEX_FILE, SINGLE_FILE, weight_files

    finals = {}
    for label, shard_mb in (("sharded", 1), ("single", 2048)):
        cfg = run_config(tmp_path / f"{label}.yaml", tmp_path / label, corpus["phi"], corpus["sources"],
                         {4: {"steps": 1}}, run_stages=[4],
                         training={"eval_samples": 1, "checkpoint_every": 0, "report_to": [], "progress_bar": False,
                                   "handoff_shard_mb": shard_mb})
        log = tmp_path / f"{label}.log"
        assert train_stage(corpus["ds"], cfg, 4, log, world=3) == 0, read_log(log)
        finals[label] = tmp_path / label / "stage-4" / "final"
    assert weight_files(finals["single"]) == [SINGLE_FILE]
    sharded = weight_files(finals["sharded"])
    assert sharded[0] == INDEX_FILE and len(sharded) > 4  # an index and shards of three owner ranks
    a, b = weights(finals["sharded"]), weights(finals["single"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_without_new_tokens_trains_all_its_parameters(corpus, gpt2_tokenizer_dir, english_docs, tmp_path):
    """The no-expansion baseline: a stage-0 directory from the base tokenizer itself (no `added` rows)
    trains every parameter under ZeRO-3 and hands off; a stage naming a new-row role is refused."""
    from _model_helpers import save_model, tiny_llama

    from megaeeve.model import extend_model

    base = save_model(tiny_llama(), tmp_path / "base")
    stage0 = tmp_path / "stage0"
    extend_model(base, gpt2_tokenizer_dir, tokenizer=gpt2_tokenizer_dir, output=stage0, allow_no_new_tokens=True)
    en = write_prefix(tmp_path / "en", gpt2_tokenizer_dir, english_docs[:40])
    roles = ["input_original", "output_original", "body"]
    stages = {1: {"trainable": roles, "lr": 1e-3, "steps": 2}, 2: {"trainable": ["input_added"], "lr": 1e-3}}
    cfg = run_config(tmp_path / "run.yaml", tmp_path / "run", stage0, [{"prefix": str(en), "weight": 1.0, "name": "en"}],
                     stages, default_stages=False, training=TRAINING)
    assert train_stage(corpus["ds"], cfg, 1, tmp_path / "stage1.log") == 0
    before, after = weights(stage0), weights(tmp_path / "run" / "stage-1" / "final")
    assert set(before) == set(after) and not any(".added" in n or "bias_added" in n for n in after)
    assert all(not torch.equal(before[n], after[n]) for n in roles_of(stage0)), "a parameter did not train"
    assert train_stage(corpus["ds"], cfg, 2, tmp_path / "stage2.log") == 2
    assert "input_added" in read_log(tmp_path / "stage2.log")
