"""The report of a run: tokenizer growth, losses, frozen-parameter checks, each stage's last evaluation,
bits/char against the base where the pipeline measured it, greedy samples of the base and the final model.

    megaeeve report RUN_DIR [--config RUN.yaml] [--base-model DIR_OR_GGUF --base-tokenizer DIR]
                            [--prompt TEXT ...] [--max-new-tokens N]

Any run: one `megaeeve pipeline` made, or stages trained with `megaeeve train` or `sbatch slurm/stage.sh` from
a RUN.yaml (--config; default RUN_DIR/run.yaml). The base model and tokenizer default to the ones stage-0's
megaeeve_model.json names; the samples compare the base with RUN_DIR/export if there is one, else the last
finished stage's final/. Written to RUN_DIR/report/ (report.md, report.json, PNG plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megaeeve.errors import one_line_errors
from megaeeve.log import logger

log = logger(__name__)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--config", type=Path, help="the run's RUN.yaml (default: RUN_DIR/run.yaml)")
    p.add_argument("--base-model", help="the base model the samples compare with (default: stage-0's record)")
    p.add_argument("--base-tokenizer", help="its tokenizer (default: stage-0's record, else the base model's)")
    p.add_argument("--prompt", action="append", help="a prompt for the greedy samples (repeatable; default: a Korean "
                   "and an English one)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    return p


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)

    from megaeeve.model import read_model_meta
    from megaeeve.report import PROMPTS, build_report
    from megaeeve.training.config import load_run_config

    config = args.config or args.run_dir / "run.yaml"
    if not config.is_file():
        p.error(f"{config}: no such run config; give the run's RUN.yaml with --config")
    stage0 = load_run_config(config).model
    meta = read_model_meta(stage0)
    base_model = args.base_model or meta.base_model
    base_tokenizer = args.base_tokenizer or args.base_model or meta.base_tokenizer
    for what, path in (("model", base_model), ("tokenizer", base_tokenizer)):
        if not Path(path).exists():
            p.error(f"{path}: the base {what} recorded in {stage0} is not there (moved?); give --base-{what}")
    out = build_report(args.run_dir, config, base_model=base_model, base_tokenizer=base_tokenizer,
                       prompts=tuple(args.prompt or PROMPTS), max_new_tokens=args.max_new_tokens)
    log.info(f"wrote {out / 'report.md'}")
    return 0
