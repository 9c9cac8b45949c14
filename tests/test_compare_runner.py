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
from megaeeve.stages import cooldown_lrs  # noqa: E402


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


def test_wsd_methods_hold_the_peak_lr_until_their_cooldown(tmp_path: Path) -> None:
    """(n)'s and (o)'s stages hold the peak lr after their warmup until their last one or two, which follow one
    cosine from the peak down to 10% of it; (m)'s every stage decays on its own."""
    from megaeeve.training.config import load_run_config
    from megaeeve.training.engine import warmup_cosine

    wsd = ("full-fit-rank-frozen-new", "full-fit-rank-frozen-new-wsd", "full-fit-rank-frozen-new-wsd2")
    cmp = Compare(CompareConfig(out=tmp_path, scale=5, methods=wsd))
    curves = {}
    for m in cmp.methods:
        cmp.write_method_config(m)
        stages = load_run_config(cmp.method_dir(m) / "run.yaml").stages
        assert {st.warmup_ratio for st in stages.values()} == {0.1}
        # the lr the stage's engine follows after its warmup, step by step, as a fraction of the method's lr
        curves[m.key] = [st.lr / cmp.cc.full_lr * warmup_cosine(st.steps, 1, st.min_lr_ratio)(i)
                         for _, st in sorted(stages.items()) for i in range(1, st.steps + 1)]
    steps = cmp.cc.steps
    assert curves["full-fit-rank-frozen-new"][steps - 1] == pytest.approx(0.1)
    for key, stable in (("full-fit-rank-frozen-new-wsd", 6), ("full-fit-rank-frozen-new-wsd2", 5)):
        lrs = curves[key]
        assert lrs[:stable * steps] == pytest.approx([1.0] * stable * steps)
        cooldown = lrs[stable * steps:]
        assert cooldown[-1] == pytest.approx(0.1)
        # one cosine across the cooldown's stages: never rising, no jump back up at a stage boundary
        assert all(b <= a + 1e-12 for a, b in zip(cooldown, cooldown[1:]))
    # (o)'s first cooldown stage ends halfway down the cosine: 0.1 + 0.9 / 2
    assert curves["full-fit-rank-frozen-new-wsd2"][6 * steps - 1] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="cooldown_stages 8"):
        cooldown_lrs(7, 8, 0.1)


def test_frozen_new_wsd_preset_is_the_measured_method_o(tmp_path: Path) -> None:
    """RUN.yaml `schedule: frozen-new-wsd` (megaeeve run --schedule) trains what compare_methods' (o) trained at lr
    3e-4: the same roles (never the new tokens' rows), lrs, warmups and decays, stage by stage."""
    from megaeeve.stages import ADDED_ROLES, SCHEDULES
    from megaeeve.training.config import load_run_config

    cmp = Compare(CompareConfig(out=tmp_path, full_lr=3e-4, methods=("full-fit-rank-frozen-new-wsd2",)))
    cmp.write_method_config(cmp.methods[0])
    measured = load_run_config(cmp.method_dir(cmp.methods[0]) / "run.yaml").stages
    preset = SCHEDULES["frozen-new-wsd"]
    assert sorted(preset) == sorted(measured)

    for n, st in preset.items():
        m = measured[n]
        assert set(st.trainable) == set(m.trainable) and not ADDED_ROLES & set(st.trainable)
        assert (st.objective, st.added_rows_lr_scale) == (m.objective, m.added_rows_lr_scale)
        assert (st.lr, st.warmup_ratio, st.min_lr_ratio) == pytest.approx((m.lr, m.warmup_ratio, m.min_lr_ratio))
