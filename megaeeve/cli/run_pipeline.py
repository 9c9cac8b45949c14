"""Run the whole EEVE pipeline on the bundled default (or your own model and text) and write a report.

    megaeeve pipeline                                  # SmolLM2-135M + konlpy Korean + pydoc English
    megaeeve pipeline --tiny                           # tiny random Phi model, a few minutes
    megaeeve pipeline --tiny --script thai             # the same on Thai (ORCHID) instead of Korean
    megaeeve pipeline --base-model DIR --corpus 'ko/*.jsonl' --english en.jsonl --run-dir runs/mine

Steps (each a directory under --run-dir; existing ones are skipped, so a rerun with the same options resumes):
corpus -> [base] -> tokenizer -> stage-0 -> data -> run.yaml -> stage-1..7 -> export -> eval -> report.
Training uses every GPU when torch sees one (ds_configs/zero3.json, bf16), else 2 CPU processes.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from megaeeve.errors import one_line_errors
from megaeeve.model.init import INIT_METHODS
from megaeeve.pipeline import Pipeline, PipelineConfig, tiny_config
from megaeeve.stages import SCHEDULES


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/default (runs/tiny with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny random Phi model with phi-2's tokenizer")
    p.add_argument("--base-model", help="Hugging Face model directory or .gguf file (default: SmolLM2-135M)")
    p.add_argument("--base-tokenizer", help="base tokenizer (default: the base model's)")
    p.add_argument("--corpus", nargs="+", help="your target-language text: JSONL / txt / Parquet / Arrow files, dirs "
                                              "or globs (default: konlpy's Korean); a held-out split is made from it")
    p.add_argument("--script", help="target script, as expand-vocab's --script (default: hangul); the bundled "
                                    "text of hangul (Korean) or thai serves when --corpus is not given")
    p.add_argument("--english", nargs="+", help="your English replay text, as --corpus (default: CPython's pydoc)")
    p.add_argument("--other-text", nargs="+",
                   help="target-language text of another domain, never trained on: the report scores it too "
                        "(default with the bundled corpus: konlpy's constitution, which training then leaves out)")
    p.add_argument("--steps-per-stage", type=int)
    p.add_argument("--init", choices=INIT_METHODS,
                   help="stage-0 rows (megaeeve extend --init; default: fit, the measured best; eeve with the "
                        "default schedule is the card's recipe exactly)")
    p.add_argument("--schedule", choices=list(SCHEDULES),
                   help="stage preset (default: frozen-new-wsd after --init fit, a short run's recipe: the new rows "
                        "kept at the fitted init, the rest at a held lr, a cooldown over stages 6-7; eeve, the card's "
                        "seven stages, after any other init; eeve+distill teaches stages 1-3 by distilling the base)")
    p.add_argument("--seq-length", type=int)
    p.add_argument("--nproc", type=int, help="training processes (default: every GPU, else 2 CPU processes)")
    p.add_argument("--fit-input-steps", type=int,
                   help="steps of the stage-0 input fit (megaeeve extend --fit-input-steps; default 150, 10 with "
                        "--tiny; about 9 s each for SmolLM2-135M on 2 CPU cores, 0 skips it)")
    p.add_argument("--fit-output-steps", type=int,
                   help="steps of the stage-0 output fit through the shared rank-16 map (megaeeve extend "
                        "--fit-output-steps; default 600, 20 with --tiny; 0 skips it)")
    p.add_argument("--eval-chars", type=int,
                   help="characters of each eval text the report scores (default 20,000: the first documents, the "
                        "last one cut); scoring time grows with it, a base model reading bytes most")
    p.add_argument("--intermediate-vocab-size", type=int)
    p.add_argument("--min-frequency", type=int)
    p.add_argument("--ds-config", type=Path, help="default: ds_configs/zero3.json on GPUs, zero3_cpu.json on CPU")
    return p


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The run's configuration: the preset (--tiny or the bundled default) with every option given on top."""
    run_dir = args.run_dir or Path("runs") / ("tiny" if args.tiny else "default")
    cfg = tiny_config(run_dir) if args.tiny else PipelineConfig(run_dir=run_dir)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
                 if v is not None and k in {f.name for f in dataclasses.fields(PipelineConfig)} and k != "run_dir"}
    return dataclasses.replace(cfg, **overrides)


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.tiny and args.base_model:
        p.error("--tiny and --base-model exclude each other")
    if args.eval_chars is not None and args.eval_chars < 1:
        p.error(f"--eval-chars must be at least 1, got {args.eval_chars}")
    Pipeline(config_from_args(args)).run()  # a failing step's PipelineError: its tool has printed its own error above
    return 0

