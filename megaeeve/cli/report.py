"""The report of a pipeline run directory: tokenizer growth, losses, frozen-parameter checks, bits/char, samples.

    megaeeve report RUN_DIR [--base-model DIR_OR_GGUF --base-tokenizer DIR] [--max-new-tokens N]

RUN_DIR is laid out as `megaeeve pipeline` lays it out (tokenizer/, run.yaml, stage-N/, eval/, export/); the
base model and tokenizer default to the ones its pipeline.json names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--base-model", help="the base model the samples compare with (default: from pipeline.json)")
    p.add_argument("--base-tokenizer", help="its tokenizer (default: from pipeline.json, else the base model's)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args(argv)

    from megaeeve.report import build_report

    recorded = args.run_dir / "pipeline.json"
    saved = json.loads(recorded.read_text(encoding="utf-8")) if recorded.is_file() else {}
    saved = {k: v for k, v in saved.items() if v != "None"}
    # The pipeline trains from run_dir/base when it had to make the base (a gguf file, --tiny).
    base_model = args.base_model or (str(args.run_dir / "base") if (args.run_dir / "base").is_dir()
                                     else saved.get("base_model"))
    if base_model is None:
        p.error(f"{recorded} names no base model: give --base-model (and --base-tokenizer)")
    base_tokenizer = args.base_tokenizer or saved.get("base_tokenizer") or base_model
    try:
        out = build_report(args.run_dir, base_model, base_tokenizer, args.max_new_tokens)
    except FileNotFoundError as e:
        print(f"error: {args.run_dir}: not a pipeline run directory ({e})", file=sys.stderr)
        return 2
    print(f"wrote {out / 'report.md'}")
    return 0
