"""Evaluate a model on named texts: bits per character / byte, characters per token, generation speed.

    python tools/evaluate.py --model DIR_OR_GGUF [--tokenizer DIR] --text NAME=FILE [--text NAME=FILE ...] \
        [--max-docs N] [--max-chars N] [--output eval.json]

--model: a base Hugging Face directory or .gguf file, a megaeeve model directory (stage-0, stage-N/final)
or an export. FILE: JSONL (`text` key) or .txt (one document a line), read as preprocess_data reads it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from megaeeve.errors import one_line_errors
from megaeeve.log import logger

log = logger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_texts(specs: list[str]) -> dict[str, str]:
    from megaeeve.errors import EvalError

    texts: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise EvalError(f"--text {spec!r}: expected NAME=FILE")
        if name in texts:
            raise EvalError(f"--text {spec!r}: the name {name!r} is given twice")
        texts[name] = path
    return texts


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory, .gguf file, megaeeve model directory "
                                                        "or export")
    parser.add_argument("--tokenizer", help="tokenizer directory or .gguf file (default: the model's)")
    parser.add_argument("--text", action="append", required=True, metavar="NAME=FILE",
                        help="a named text to evaluate on (repeatable)")
    parser.add_argument("--max-docs", type=int, help="only the first N documents of each text")
    parser.add_argument("--max-chars", type=int,
                        help="only the first N characters of each text (documents in file order, the last one cut)")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    parser.add_argument("--context", type=int, help="window length in tokens (default: max_position_embeddings)")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per forward pass")
    parser.add_argument("--gen-tokens", type=int, default=32,
                        help="tokens generated per prompt for the speed measurement (0: skip it)")
    parser.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    return parser


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for flag in ("max_docs", "max_chars"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")

    from megaeeve.atomic import write_json
    from megaeeve.eval import (EvalSettings, evaluate_model, format_table, load_any_model, load_hf_tokenizer,
                               read_texts, results_json)

    texts = {name: read_texts(path, args.max_docs, args.max_chars) for name, path in parse_texts(args.text).items()}
    tokenizer = load_hf_tokenizer(args.tokenizer or args.model)
    model = load_any_model(args.model, device=args.device)
    settings = EvalSettings(context=args.context, batch_tokens=args.batch_tokens, gen_tokens=args.gen_tokens)
    results = evaluate_model(model, tokenizer, texts, settings)
    log.info(f"model {args.model}")
    log.info(format_table(results))
    if args.output:
        write_json(args.output, results_json(args.model, results))
    return 0

