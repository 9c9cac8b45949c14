"""Does distilling from the base model win back extension's loss faster than the next-token loss? A tiny budget.

    python bench/bench_distill.py [--out bench/out/distill] [--stage 3] [--steps 8] [--objectives lm distill mixed]

The default pipeline's inputs on SmolLM2-135M (Korean and English corpora, the expanded tokenizer, stage-0,
the datasets: reused when --out already holds them), then one stage trained from stage-0 once per objective
(RUN.yaml `stages.N.objective`) with the same batches, budget and schedule (ZeRO-3: 2 CPU ranks in fp32, or
every GPU in bf16, as the pipeline chooses). `megaeeve evaluate` measures held-out Korean and English bits per character of the base, stage-0 and each
result. Break-even is the base's Korean bits/char: the table shows how far each objective moves from stage-0
at the same training tokens, and what a step costs (the teacher's forward runs on every micro-batch).
Prints a table and writes OUT/distill.json; a step whose output exists is skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from megaeeve.atomic import atomic_file, write_json  # noqa: E402
from megaeeve.pipeline import EVAL_TEXTS, Pipeline, PipelineConfig, command  # noqa: E402

INPUTS = ("corpus", "base", "tokenizer", "stage-0", "data-ko", "data-en", "run.yaml")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "distill")
    p.add_argument("--stage", type=int, default=3, help="the stage trained from stage-0 (default: 3, new rows)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--objectives", nargs="+", default=["lm", "distill", "mixed"])
    args = p.parse_args(argv)

    pipe = Pipeline(PipelineConfig(run_dir=args.out, steps_per_stage=args.steps))
    steps = {s.name: s for s in pipe.steps()}
    for name in INPUTS:
        if not steps[name].output.exists():
            steps[name].run()
    texts = [a for name, file in EVAL_TEXTS.items() for a in ("--text", f"{name}={pipe.corpus_file(file)}")]

    def evaluate(name: str, model: Path | str, tokenizer: Path | str) -> dict:
        out = pipe.root / "distill" / f"eval-{name}.json"
        if not out.exists():
            pipe.call(f"eval-{name}", command("evaluate", "--model", model, "--tokenizer", tokenizer,
                                               *texts, "--gen-tokens", 0, "--output", out))
        return {text: r["bits_per_char"] for text, r in json.loads(out.read_text())["texts"].items()}

    rows = {"base": {**evaluate("base", pipe.base_model, pipe.base_tokenizer), "step_s": None},
            "stage-0": {**evaluate("stage-0", pipe.root / "stage-0", pipe.root / "stage-0"), "step_s": None}}
    run = yaml.safe_load((pipe.root / "run.yaml").read_text())
    for objective in args.objectives:
        run_dir = pipe.root / "distill" / objective
        config = {**run, "run_dir": str(run_dir), "run_stages": [args.stage],
                  "stages": {args.stage: {"steps": args.steps, "warmup_ratio": 0.1, "objective": objective}}}
        run_yaml = pipe.root / "distill" / f"{objective}.yaml"
        run_yaml.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(run_yaml, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        stage_dir = run_dir / f"stage-{args.stage}"
        step = pipe.stage_step(f"{objective}.stage-{args.stage}", run_yaml, args.stage, stage_dir)
        if not step.output.exists():
            step.run()
        records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
        times = [r["step_time_s"] for r in records if r["kind"] == "train"][1:]  # the first step warms up
        rows[objective] = {**evaluate(objective, stage_dir / "final", stage_dir / "final"),
                           "step_s": sum(times) / len(times)}

    base, start = rows["base"]["held_out"], rows["stage-0"]["held_out"]
    print(f"stage {args.stage}, {args.steps} steps from stage-0; Korean bits/char: base {base:.3f} (break-even), "
          f"stage-0 {start:.3f}")
    print(f"{'model':10s} {'ko bits/char':>12s} {'vs stage-0':>10s} {'en bits/char':>12s} {'s/step':>7s}")
    for name, r in rows.items():
        step_s = "" if r["step_s"] is None else f"{r['step_s']:.2f}"
        print(f"{name:10s} {r['held_out']:12.3f} {r['held_out'] - start:+10.3f} {r['english']:12.3f} {step_s:>7s}")
    write_json(pipe.root / "distill.json", {"stage": args.stage, "steps": args.steps, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
