"""bench/compare_runner.py's plan: a comparison makes the stage-0 directories its methods read, and the base's.

A stage-0 with an input fit costs 20 minutes on 2 CPU cores, so a comparison of one method must not make the
others'; the base model's stage 0 is the reference every report needs (break-even, the base's bits/char).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare_runner import BASE_STAGE0, METHODS, STAGE0, Compare, CompareConfig  # noqa: E402


def extend_steps(cmp: Compare) -> list[str]:
    return [s.name for s in cmp.steps() if s.name in STAGE0]


@pytest.mark.parametrize("methods, wanted", [
    (("full-fit-rank",), ["stage-0-base", "stage-0-fit-rank16"]),
    (("eeve", "full-eeve"), ["stage-0", "stage-0-base"]),
    (("no-expand",), ["stage-0-base"]),
])
def test_only_the_chosen_methods_stage0_and_the_base_are_made(tmp_path: Path, methods, wanted) -> None:
    cmp = Compare(CompareConfig(out=tmp_path, methods=methods))
    assert sorted(extend_steps(cmp)) == wanted
    evals = sorted(s.name for s in cmp.steps() if s.name.startswith("eval-"))
    assert evals == [f"eval-{name}" for name in wanted]


def test_every_stage0_a_method_reads_is_planned(tmp_path: Path) -> None:
    cmp = Compare(CompareConfig(out=tmp_path))
    assert set(extend_steps(cmp)) == {m.stage0 for m in METHODS} | {BASE_STAGE0}
    assert set(STAGE0) == {m.stage0 for m in METHODS} | {BASE_STAGE0}  # no entry that nothing reads


def test_tokenizer_settings_reach_the_expansion_step(tmp_path: Path, monkeypatch) -> None:
    """compare_methods' --min-frequency and --intermediate-vocab-size are what expand-vocab is called with."""
    from bench import compare_methods

    calls = []
    monkeypatch.setattr(Compare, "run", lambda self: [s.run() for s in self.steps() if s.name == "tokenizer"])
    monkeypatch.setattr(Compare, "call", lambda self, name, cmd: calls.append([str(x) for x in cmd]))
    monkeypatch.setattr(compare_methods, "report", lambda cmp: {})
    compare_methods.main(["--out", str(tmp_path), "--methods", "full-fit", "--min-frequency", "300",
                          "--intermediate-vocab-size", "6000", "--results", ""])
    (cmd,) = calls
    assert cmd[cmd.index("--min-frequency") + 1] == "300"
    assert cmd[cmd.index("--intermediate-vocab-size") + 1] == "6000"


def test_a_methods_objective_reaches_every_stage_of_its_run(tmp_path: Path) -> None:
    """(k)'s stages train every parameter on next-token loss + distillation, as megaeeve reads its RUN.yaml."""
    from megaeeve.training.config import load_run_config

    cmp = Compare(CompareConfig(out=tmp_path, methods=("full-fit-rank-mixed", "full-fit-rank")))
    for m in cmp.methods:
        cmp.write_method_config(m)
        stages = load_run_config(cmp.method_dir(m) / "run.yaml").stages
        assert len(stages) == 7
        assert {st.objective for st in stages.values()} == {m.objective}
        assert all(set(st.trainable) == set(m.roles) for st in stages.values())
    assert {m.objective for m in cmp.methods} == {"mixed", "lm"}


def test_korean_weight_reaches_the_blend_and_a_rerun_with_another_is_refused(tmp_path: Path) -> None:
    """--korean-weight is every stage's blend as megaeeve reads the RUN.yaml; the same --out with another weight
    (or lr) is refused by name rather than resumed under one table's settings."""
    from megaeeve.atomic import write_json
    from megaeeve.errors import PipelineError
    from megaeeve.training.config import load_run_config

    cmp = Compare(CompareConfig(out=tmp_path, methods=("full-fit-rank-frozen-new",), korean_weight=0.9))
    (m,) = cmp.methods
    cmp.write_method_config(m)
    sources = {s.name: s.weight for s in load_run_config(cmp.method_dir(m) / "run.yaml").data.sources}
    assert sources == pytest.approx({"ko": 0.9, "en": 0.1})
    write_json(tmp_path / "pipeline.json", cmp.options())  # what run() records before its first step
    Compare(CompareConfig(out=tmp_path, korean_weight=0.9, methods=("eeve",))).check_options()  # more methods: fine
    for changed in (dict(korean_weight=0.7), dict(full_lr=3e-4)):
        with pytest.raises(PipelineError, match=next(iter(changed))):
            Compare(CompareConfig(out=tmp_path, **{"korean_weight": 0.9, **changed})).check_options()
    with pytest.raises(ValueError, match="korean_weight 1"):
        CompareConfig(out=tmp_path, korean_weight=1.0)


def test_wsd_method_decays_in_its_last_stage_only(tmp_path: Path) -> None:
    """(n)'s stages hold the peak lr after their warmup but the last, which decays as every stage of (m) does."""
    from megaeeve.training.config import load_run_config

    cmp = Compare(CompareConfig(out=tmp_path, methods=("full-fit-rank-frozen-new", "full-fit-rank-frozen-new-wsd")))
    ratios = {}
    for m in cmp.methods:
        cmp.write_method_config(m)
        stages = load_run_config(cmp.method_dir(m) / "run.yaml").stages
        ratios[m.key] = [stages[n].min_lr_ratio for n in sorted(stages)]
        assert {st.warmup_ratio for st in stages.values()} == {0.1}
    assert ratios["full-fit-rank-frozen-new"] == [0.1] * 7
    assert ratios["full-fit-rank-frozen-new-wsd"] == [1.0] * 6 + [0.1]
