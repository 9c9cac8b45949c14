"""The one-command pipeline (`tools/run_pipeline.py --tiny`) end to end, as CI runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


# EEVE's seven stages, each a different trainable set: the ladder these tests check. The default schedule after the
# fitted init (frozen-new-wsd) runs end to end in test_pipeline_thai.py.
FLAGS = ("--tiny", "--steps-per-stage", "4", "--schedule", "eeve")


@pytest.fixture(scope="module")
def tiny_run(module_tmp):
    run_dir = module_tmp("pipeline") / "tiny"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "run_pipeline.py"), *FLAGS, "--run-dir", str(run_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir, proc.stdout


def test_every_step_ran_and_the_report_shows_it(tiny_run):
    run_dir, out = tiny_run
    for n in range(1, 8):
        assert (run_dir / f"stage-{n}" / "DONE").is_file()
        assert (run_dir / f"stage-{n}" / "metrics.jsonl").stat().st_size > 0
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    for heading in ("## Tokenizer", "## Training", "## Held-out evaluation", "## Samples"):
        assert heading in report
    assert "| 6 | input_original, input_added, output_original, output_added, body |" in report
    assert "no frozen tensors" in report and "0/0" not in report
    for png in ("tokenizer.png", "loss.png", "bits_per_char.png"):
        data = (run_dir / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "pipeline complete" in out


def test_report_numbers_hold_the_invariants(tiny_run):
    run_dir, _ = tiny_run
    report = json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))
    checks = report["frozen_checks"]
    assert sorted(map(int, checks)) == list(range(1, 8))
    for stage, check in checks.items():
        assert check["ok"], (stage, check)
        assert check["frozen_unchanged"] == check["frozen_total"]
    plans = report["stage_plans"]
    # stage 6 trains everything, stage 1 only the new input rows
    assert plans["6"]["trainable"] == plans["6"]["total"] > plans["1"]["trainable"] > 0
    # the tokens trained, from each stage's steps and the ds_config's batch (2 ranks, 64 tokens a sample)
    ds = json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text(encoding="utf-8"))
    steps = sum(json.loads((run_dir / f"stage-{n}" / "DONE").read_text(encoding="utf-8"))["steps"] for n in range(1, 8))
    tokens = steps * ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2 * 64
    assert steps == 7 * 4 and report["trained_tokens"] == tokens
    markdown = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert f"after {tokens:,} training tokens" in markdown
    assert "| 1 | input_added | " in markdown and "| 2e-05 -> 2e-06 |" in markdown  # stage 1 and stage 6-7's lr
    expansion = json.loads((run_dir / "tokenizer" / "expansion_report.json").read_text(encoding="utf-8"))
    cpt = expansion["chars_per_token"]
    assert cpt["english"]["identical_ids"] is True
    assert cpt["held_out"]["expanded_chars_per_token"] > 2 * cpt["held_out"]["base_chars_per_token"]
    assert set(report["samples"]) == {"base", "final"}


def test_frozen_check_reads_the_checkpoints_and_catches_a_moved_tensor(tiny_run, tmp_path):
    """final/ copies frozen tensors from the input, so only the checkpoint can show one that moved."""
    from _model_helpers import model_dir_like

    from megaeeve.model import parameter_roles
    from megaeeve.model.weights import load_weights
    from megaeeve.report import frozen_check
    from megaeeve.training.plan import meta_model

    run_dir, _ = tiny_run
    report = json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["frozen_checks"]["6"]["frozen_total"] == 0
    assert {c["engine_dtype"] for c in report["frozen_checks"].values()} == {"float32"}
    state = load_weights(run_dir / "stage-0")
    state["lm_head.original"][3, 5] += 1e-3  # frozen in stage 1
    moved = model_dir_like(state, run_dir / "stage-0", tmp_path / "moved")
    roles = parameter_roles(meta_model(run_dir / "stage-0"))
    check = frozen_check(moved, run_dir / "stage-1" / "checkpoints", roles, ["input_added"])
    assert not check["ok"] and check["violations"] == ["lm_head.original"]


def test_report_evaluates_every_stage_against_the_base(tiny_run):
    run_dir, _ = tiny_run
    names = ["base"] + [f"stage-{n}" for n in range(8)]
    evals = json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))["evaluation"]
    assert list(evals) == names
    for name in names:
        on_disk = json.loads((run_dir / "eval" / f"{name}.json").read_text(encoding="utf-8"))
        assert on_disk["texts"] == evals[name]
        for text in ("held_out", "other_domain", "english"):
            assert 0 < evals[name][text]["bits_per_char"] < 40 and evals[name][text]["gen_chars_per_s"] > 0
    base, stage0, final = evals["base"], evals["stage-0"], evals["stage-7"]
    assert stage0["english"]["tokens"] == base["english"]["tokens"]  # English: identical ids
    assert stage0["held_out"]["chars_per_token"] > 2 * base["held_out"]["chars_per_token"]
    assert stage0["other_domain"]["chars_per_token"] > 1.5 * base["other_domain"]["chars_per_token"]
    assert final["held_out"]["bits_per_char"] < stage0["held_out"]["bits_per_char"]
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert f"| stage-7 | {final['held_out']['bits_per_char']:.4f} |" in report
    assert re.search(r"English, stage 0 against the base: [+-]\d", report)
    # the verdict: base, stage 0 and the final model on every text, and whether the final model beats the base
    for text, label in (("held_out", "target language (held out)"), ("other_domain", "target language, another domain"),
                        ("english", "English (held out)")):
        b, f = base[text]["bits_per_char"], final[text]["bits_per_char"]
        assert f"| {label} | {b:.4f} |" in report
        assert f"({f - b:+.4f}) | {'yes' if f < b else 'no'} |" in report
    assert ("beats its base on every text" in report) == all(
        final[t]["bits_per_char"] < base[t]["bits_per_char"] for t in ("held_out", "other_domain", "english"))


def test_export_is_a_plain_transformers_model(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = tiny_run
    tok = AutoTokenizer.from_pretrained(str(run_dir / "export"))
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "export"))
    ids = tok("대한민국의 모든 국민은", return_tensors="pt").input_ids
    base_size = json.loads((run_dir / "tokenizer" / "expansion_report.json").read_text())["base_vocab_size"]
    assert (ids >= base_size).any(), "Korean prompt uses none of the new tokens"
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


def test_rerun_resumes_and_skips_finished_steps(tiny_run):
    run_dir, _ = tiny_run
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "run_pipeline.py"), *FLAGS, "--run-dir", str(run_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert lines and all("done already" in line for line in lines), lines
