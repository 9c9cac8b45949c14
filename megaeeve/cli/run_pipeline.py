"""Run the whole EEVE pipeline on the bundled default (or your own base model) and write a report.

    python tools/run_pipeline.py                       # SmolLM2-135M + konlpy Korean + pydoc English
    python tools/run_pipeline.py --tiny                # tiny random Phi model, a few minutes
    python tools/run_pipeline.py --base-model DIR --base-tokenizer DIR --run-dir runs/phi2

Steps (each a directory under --run-dir; existing ones are skipped, so a rerun resumes):
corpus -> [base] -> tokenizer -> stage-0 -> data -> run.yaml -> stage-1..7 -> export -> report.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


from megaeeve.pipeline import Pipeline, PipelineConfig, tiny_config


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/default (runs/tiny with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny random Phi model with phi-2's tokenizer")
    p.add_argument("--base-model", help="Hugging Face model directory or .gguf file (default: SmolLM2-135M)")
    p.add_argument("--base-tokenizer", help="base tokenizer (default: the base model's)")
    p.add_argument("--steps-per-stage", type=int)
    p.add_argument("--seq-length", type=int)
    p.add_argument("--nproc", type=int, help="training processes (default 2)")
    p.add_argument("--intermediate-vocab-size", type=int)
    p.add_argument("--min-frequency", type=int)
    p.add_argument("--ds-config", type=Path)
    args = p.parse_args(argv)
    if args.tiny and args.base_model:
        p.error("--tiny and --base-model exclude each other")
    run_dir = args.run_dir or Path("runs") / ("tiny" if args.tiny else "default")
    cfg = tiny_config(run_dir) if args.tiny else PipelineConfig(run_dir=run_dir)
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k in {f.name for f in dataclasses.fields(PipelineConfig)} and k != "run_dir"}
    cfg = dataclasses.replace(cfg, **overrides)
    Pipeline(cfg).run()
    return 0

