"""Expand a base tokenizer with target-language tokens, refined by frequency (EEVE steps 1-7).

    python tools/expand_vocab.py --base-tokenizer DIR --corpus ko.jsonl --output out/tok
    mpiexec -n 4 python tools/expand_vocab.py ...   # counting split over 4 ranks, counts summed
"""

from __future__ import annotations

import argparse
import os

from megaeeve.argtypes import positive_float, positive_int
from megaeeve.errors import one_line_errors


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-tokenizer", required=True, help="HF tokenizer directory or tokenizer.json")
    p.add_argument("--corpus", nargs="+", required=True, help="target-language corpus (files, dirs, globs)")
    p.add_argument("--output", required=True, help="output directory (written atomically)")
    p.add_argument("--intermediate-vocab-size", type=positive_int, default=40_000)
    p.add_argument("--intermediate-sample-bytes", type=positive_int, default=256_000_000,
                   help="text the intermediate tokenizer trains on, sampled evenly over --corpus (its trainer's"
                        " memory grows with the distinct words it sees); counting reads everything (default 256 MB)")
    freq = p.add_mutually_exclusive_group()
    freq.add_argument("--min-frequency", type=positive_int, default=None, help="absolute count (default 6000)")
    freq.add_argument("--min-frequency-per-million", type=positive_float, default=None, help="rate per million tokens")
    p.add_argument("--count-corpus", nargs="+", default=None, help="corpus to count on (default: --corpus)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count(), help="counting processes, threads for training (default: all cores)")
    p.add_argument("--script", default="hangul", help="target script: a name or ranges U+AC00-U+D7AF,...")
    p.add_argument("--held-out", nargs="+", default=[], help="held-out target-language text for chars/token")
    p.add_argument("--english", nargs="+", default=[], help="non-target text that must tokenize as by the base (default: CPython's pydoc topics)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    return build_parser(prog).parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    # The tokenizers thread pool reads these once, at first use: set them before importing it.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if args.workers > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from megaeeve.vocab import ExpandConfig, expand_vocab

    cfg = ExpandConfig(
        base_tokenizer=args.base_tokenizer,
        corpus=args.corpus,
        output=args.output,
        intermediate_vocab_size=args.intermediate_vocab_size,
        intermediate_sample_bytes=args.intermediate_sample_bytes,
        min_frequency=args.min_frequency if args.min_frequency is not None else 6_000,
        min_frequency_per_million=args.min_frequency_per_million,
        count_corpus=args.count_corpus,
        script=args.script,
        held_out=args.held_out,
        english=args.english,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    expand_vocab(cfg)
    return 0

