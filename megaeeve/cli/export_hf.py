"""Export a megaeeve model directory (stage-0 or a stage's final/) to a plain Hugging Face model directory.

    python tools/export_hf.py --input runs/NAME/stage-7/final --output exported/
"""

from __future__ import annotations

import argparse
import os

from megaeeve.errors import one_line_errors
from megaeeve.log import logger

log = logger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = ("float32", "bfloat16", "float16")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="megaeeve model directory")
    parser.add_argument("--output", required=True, help="Hugging Face model directory to create")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the exported weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    import torch

    from megaeeve.model import export_hf, read_model_meta

    export_hf(args.input, args.output, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    meta = read_model_meta(args.input)
    log.info(f"wrote {args.output}: vocab_size {meta.padded_vocab_size} ({meta.vocab_size} tokens, "
             f"{meta.num_padding} zero padding rows suppressed in generation_config)")
    return 0

