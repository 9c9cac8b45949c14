"""The pipeline's options without running its steps: devices, the user's text, reruns, a failing step."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megaeeve import assets
from megaeeve.cli.run_pipeline import build_parser, config_from_args
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


def test_the_default_recipe_follows_the_init(tmp_path):
    """The fitted init trains with frozen-new-wsd (its new rows stay where the fit put them); any other init's rows
    must learn, so `--init eeve` alone gives the card's recipe exactly: EEVE's rows and EEVE's seven stages."""
    def planned(*flags: str) -> tuple[dict, list[str]]:
        """The run.yaml the options write and the `megaeeve extend` command they run."""
        run = Pipeline(config_from_args(build_parser().parse_args(["--run-dir", str(tmp_path / str(len(seen))),
                                                                   *flags])))
        seen.append(run)
        run.root.mkdir(parents=True)
        run.write_run_config()
        calls = []
        run.call = lambda name, cmd: calls.append(cmd)  # the step's command, not run
        next(s for s in run.steps() if s.name == "stage-0").run()
        return yaml.safe_load((run.root / "run.yaml").read_text()), [str(a) for a in calls[0]]

    seen: list[Pipeline] = []

    run_yaml, extend = planned()
    assert run_yaml["schedule"] == "frozen-new-wsd" and extend[extend.index("--init") + 1] == "fit"
    run_yaml, extend = planned("--init", "eeve")
    assert run_yaml["schedule"] == "eeve" and extend[extend.index("--init") + 1] == "eeve"
    run_yaml, _ = planned("--init", "fit", "--schedule", "eeve")
    assert run_yaml["schedule"] == "eeve"
    first = Pipeline(PipelineConfig(run_dir=tmp_path / "resumed"))
    first.root.mkdir()
    (first.root / "pipeline.json").write_text(json.dumps({**first.options(), "schedule": "eeve"}))
    with pytest.raises(PipelineError, match="schedule eeve -> frozen-new-wsd"):  # a run made by the old default
        first.check_options()
