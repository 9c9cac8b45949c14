"""The seven-stage trainer end to end: 2 ranks, gloo, real DeepSpeed ZeRO-3 engines, tiny Phi and Llama models.

One chained run per architecture (module-scoped) serves every assertion about it; the Phi chain's stage 6
is also the uninterrupted reference of the kill -9 / SIGUSR1 resume test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import (REPO, TRAIN, ds_config, launch, make_stage0, metrics, read_log, run_config, train_stage,
                            wait, weights, write_prefix)
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from megaeeve.model import parameter_roles, read_model_meta
from megaeeve.model.checkpoint import build_split_model
from megaeeve.stages import DEFAULT_STAGES
from megaeeve.training.signals import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow


def _roles(model_dir: Path) -> dict[str, str]:
    from transformers import AutoConfig

    with torch.device("meta"):
        model = build_split_model(AutoConfig.from_pretrained(str(model_dir)), read_model_meta(model_dir), torch.float32)
    return parameter_roles(model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, gpt2_tokenizer_dir, korean_split, english_docs):
    """Stage-0 models (Phi, Llama) and Korean + English datasets tokenized with the expanded tokenizer."""
    tmp = tmp_path_factory.mktemp("train")
    phi = make_stage0(tmp, "phi", gpt2_tokenizer_dir)
    llama = make_stage0(tmp, "llama", gpt2_tokenizer_dir)
    ko = write_prefix(tmp / "ko", phi, korean_split[0][:40])
    en = write_prefix(tmp / "en", phi, english_docs[:40])
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    return {"tmp": tmp, "phi": phi, "llama": llama, "sources": sources, "ds": ds_config(tmp / "ds.json"),
            "ds_bf16": ds_config(tmp / "ds_bf16.json", bf16=True)}


RESUME_STAGE, RESUME_STEPS = 6, 6  # the chain's stage 6 is also the uninterrupted run of the resume test
TRAINING = {"eval_samples": 4, "checkpoint_every": 2, "progress_bar": False}


def _chain(corpus, arch: str, stages: list[int], steps: int = 2, bf16: bool = False) -> dict:
    tmp = corpus["tmp"]
    run_dir = tmp / f"run-{arch}"
    budgets = {s: {"steps": RESUME_STEPS if s == RESUME_STAGE else steps} for s in stages}
    cfg = run_config(tmp / f"{arch}.yaml", run_dir, corpus[arch], corpus["sources"], budgets, run_stages=stages,
                     training=TRAINING)
    for s in stages:
        code = train_stage(corpus["ds_bf16" if bf16 else "ds"], cfg, s, tmp / f"{arch}-stage{s}.log")
        assert code == 0, read_log(tmp / f"{arch}-stage{s}.log")
    return {"run_dir": run_dir, "cfg": cfg, "stages": stages, "model": corpus[arch], "roles": _roles(corpus[arch]),
            "bf16": bf16}


@pytest.fixture(scope="module")
def phi_chain(corpus):
    return _chain(corpus, "phi", list(range(1, 8)))


@pytest.fixture(scope="module")
def llama_chain(corpus):
    return _chain(corpus, "llama", [5], bf16=True)  # bf16 engine: the hand-off must still be the fp32 masters


def _check_stage(chain: dict, stage: int) -> None:
    """Frozen tensors bitwise unchanged, trainable ones changed, optimizer state only for trainable ones."""
    run_dir, roles = chain["run_dir"], chain["roles"]
    i = chain["stages"].index(stage)
    src = chain["model"] if i == 0 else run_dir / f"stage-{chain['stages'][i - 1]}" / "final"
    before, after = weights(src), weights(run_dir / f"stage-{stage}" / "final")
    trainable = {n for n, r in roles.items() if r in DEFAULT_STAGES[stage].trainable}
    assert trainable and set(after) == set(before)
    # The engine's own view, consolidated independently by DeepSpeed from the stage's last ZeRO checkpoint.
    engine_view = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / f"stage-{stage}" / "checkpoints"))
    for name in roles:
        if name in trainable:
            assert not torch.equal(after[name], before[name]), f"stage {stage}: trainable {name} did not change"
            assert after[name].dtype == torch.float32
            assert torch.equal(after[name], engine_view[name]), f"stage {stage}: {name} hand-off is not the fp32 master"
            if chain["bf16"]:
                assert not torch.equal(after[name], after[name].bfloat16().float()), f"{name} lost fp32 precision"
        else:
            assert torch.equal(after[name], before[name]), f"stage {stage}: frozen {name} changed in final/"
            # A bf16 engine holds (and its checkpoint stores) frozen weights in bf16.
            held = before[name].bfloat16().float() if chain["bf16"] else before[name]
            assert torch.equal(engine_view[name], held), f"stage {stage}: frozen {name} moved in the engine"
    ckpt = run_dir / f"stage-{stage}" / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    optimized, numel = set(), 0
    for rank in range(2):
        states = torch.load(ckpt / tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", weights_only=False)
        optimized |= {n for shapes in states["param_shapes"] for n in shapes}
        optim_file, = (ckpt / tag).glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")  # bf16_ prefix in bf16
        optim = torch.load(optim_file, weights_only=False)
        for group_state in optim["optimizer_state_dict"]["optimizer_state_dict"]["state"].values():
            numel += group_state["exp_avg"].numel()
    assert optimized == trainable
    expected = sum(before[n].numel() for n in trainable)
    assert expected <= numel < expected + 2 * 64 * len(trainable), "Adam moments cover more than the trainable set"


@pytest.mark.parametrize("stage", range(1, 8))
def test_phi_stage_trains_exactly_its_roles(phi_chain, stage):
    _check_stage(phi_chain, stage)


@pytest.mark.parametrize("stage", [5])
def test_llama_stage_trains_exactly_its_roles(llama_chain, stage):
    _check_stage(llama_chain, stage)


def test_metrics_and_markers(phi_chain):
    stage_dir = phi_chain["run_dir"] / "stage-5"
    records = metrics(stage_dir)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert [r["step"] for r in metrics(phi_chain["run_dir"] / "stage-6") if r["kind"] == "train"] == list(range(1, 7))
    for r in train:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "new_token_share"):
            assert r[key] > 0, key
        assert r["samples_ko"] + r["samples_en"] == 8
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and {"eval_loss_ko", "eval_loss_en"} <= set(evals[-1])
    assert any((stage_dir / "tensorboard").iterdir())
    assert (stage_dir / "DONE").is_file()


def test_final_export_loads_in_plain_transformers(phi_chain, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megaeeve.model import export_hf

    final = phi_chain["run_dir"] / "stage-7" / "final"
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


def test_model_without_new_tokens_trains_all_its_parameters(corpus, gpt2_tokenizer_dir, english_docs, tmp_path):
    """The no-expansion baseline: a stage-0 directory from the base tokenizer itself (no `added` rows)
    trains every parameter under ZeRO-3 and hands off; a stage naming a new-row role is refused."""
    from _model_helpers import save_model, tiny_llama

    from megaeeve.model import extend_model

    base = save_model(tiny_llama(), tmp_path / "base")
    stage0 = tmp_path / "stage0"
    extend_model(base, gpt2_tokenizer_dir, gpt2_tokenizer_dir, stage0, allow_no_new_tokens=True)
    en = write_prefix(tmp_path / "en", gpt2_tokenizer_dir, english_docs[:40])
    roles = ["input_original", "output_original", "body"]
    stages = {1: {"trainable": roles, "lr": 1e-3, "steps": 2}, 2: {"trainable": ["input_added"], "lr": 1e-3}}
    cfg = run_config(tmp_path / "run.yaml", tmp_path / "run", stage0, [{"prefix": str(en), "weight": 1.0, "name": "en"}],
                     stages, default_stages=False, training=TRAINING)
    assert train_stage(corpus["ds"], cfg, 1, tmp_path / "stage1.log") == 0
    before, after = weights(stage0), weights(tmp_path / "run" / "stage-1" / "final")
    assert set(before) == set(after) and not any(".added" in n or "bias_added" in n for n in after)
    assert all(not torch.equal(before[n], after[n]) for n in _roles(stage0)), "a parameter did not train"
    assert train_stage(corpus["ds"], cfg, 2, tmp_path / "stage2.log") == 2
    assert "input_added" in read_log(tmp_path / "stage2.log")
