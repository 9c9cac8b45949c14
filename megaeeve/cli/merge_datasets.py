"""Concatenate MMIDIDX datasets (same dtype), in the order given, into one; streaming, atomic.

Every input is checked as the reader checks it before anything is written; a bad one is named, exit 2.
"""

from __future__ import annotations

import argparse

from megaeeve.data.indexed import merge_datasets
from megaeeve.errors import one_line_errors
from megaeeve.log import logger

log = logger(__name__)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--input", nargs="+", required=True, metavar="PREFIX", help="dataset prefixes (PREFIX.bin/.idx)")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at the output prefix")
    return p


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    out = merge_datasets(args.input, args.output_prefix, overwrite=args.overwrite)
    log.info(f"{args.output_prefix}: {out.document_count - 1} documents, {out.sequence_count} sequences ({out.dtype})")
    return 0

