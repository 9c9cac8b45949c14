"""The pipeline's options without running its steps: devices, the user's text, reruns, a failing step."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megaeeve import assets
from megaeeve.errors import PipelineError
from megaeeve.pipeline import DS_CONFIGS, Pipeline, PipelineConfig, tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_devices_follow_the_machine(monkeypatch, tmp_path):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    cpu = Pipeline(PipelineConfig(run_dir=tmp_path)).cfg
    assert (cpu.nproc, cpu.ds_config) == (2, DS_CONFIGS / "zero3_cpu.json")  # this machine has no GPU
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    gpu = Pipeline(PipelineConfig(run_dir=tmp_path)).cfg
    assert gpu.ds_config == DS_CONFIGS / "zero3.json" and gpu.nproc >= 1
    assert Pipeline(PipelineConfig(run_dir=tmp_path, nproc=4)).cfg.nproc == 4


def test_a_run_directory_refuses_other_options(tmp_path):
    first = Pipeline(tiny_config(tmp_path))
    first.root.mkdir(parents=True, exist_ok=True)
    (first.root / "pipeline.json").write_text(json.dumps(first.options()))
    first.check_options()  # the same options: a resume
    other = Pipeline(dataclasses.replace(tiny_config(tmp_path), steps_per_stage=2))
    with pytest.raises(PipelineError, match="steps_per_stage 6 -> 2"):
        other.check_options()


def test_the_users_text_is_split_into_train_and_held_out(tmp_path):
    docs = [f"사용자 문서 {i} 번째 문장입니다." for i in range(30)]
    mine = assets.write_jsonl(docs, tmp_path / "mine.jsonl")
    run = Pipeline(PipelineConfig(run_dir=tmp_path / "run", corpus=(str(mine),)))
    run.write_corpus()
    read = {name: [json.loads(line)["text"] for line in (run.corpus / f"{name}.jsonl").read_text().splitlines()]
            for name in ("ko_train", "ko_held_out", "en_train")}
    assert sorted(read["ko_train"] + read["ko_held_out"]) == sorted(docs) and read["ko_held_out"]
    assert not set(read["ko_held_out"]) & set(read["ko_train"])
    assert read["en_train"][0] in assets.english_documents()  # no --english: the bundled English


def test_a_failing_step_is_one_error_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "megaeeve", "pipeline", "--run-dir", str(tmp_path / "run"),
                          "--base-model", str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step tokenizer failed (exit 2)") and "logs/tokenizer.log" in last
