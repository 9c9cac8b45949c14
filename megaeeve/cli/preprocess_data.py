"""Tokenize JSONL / text / Parquet / Arrow corpora into one Megatron MMIDIDX dataset (PREFIX.bin/.idx).

Uses every core (the tokenizer's Rust threads); under `mpiexec -n K` / `srun` the ranks split the input
and rank 0 assembles one dataset, byte-identical to a single-process run. Also writes
PREFIX.manifest.json (inputs with sha256, tokenizer hash, documents read / written / skipped by reason,
tokens). A rerun after a crash or error reuses the finished shards; replacing a finished dataset needs
--overwrite. Bad input is one `error: FILE...` line, exit 2.
"""

from __future__ import annotations

import argparse
import os

from megaeeve.argtypes import positive_float, positive_int
from megaeeve.corpus import DEFAULT_MAX_CHARS
from megaeeve.data.preprocess import PreprocessConfig, preprocess
from megaeeve.errors import one_line_errors
from megaeeve.log import logger

log = logger(__name__)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs (quote globs)")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.bin, PREFIX.idx, PREFIX.manifest.json")
    p.add_argument("--tokenizer", "--tokenizer-model", dest="tokenizer", required=True,
                   help="a tokenizer.json file or a Hugging Face tokenizer directory (--tokenizer-model: Megatron's name)")
    p.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY",
                   help="JSON keys / table columns of the text (default: text); several keys write one dataset each, "
                        "PREFIX_KEY_document, as Megatron-LM does")
    p.add_argument("--append-eod", action="store_true", help="end every document with the EOD token")
    p.add_argument("--eod-token", help="EOD token string (default: the tokenizer directory's eos_token)")
    p.add_argument("--workers", type=positive_int, help="tokenizer threads per rank (default: the rank's share of the cores)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad records and count them by reason in the manifest (default: stop with file:line)")
    p.add_argument("--max-chars", type=positive_int, default=DEFAULT_MAX_CHARS, help="longer documents are bad (too_long)")
    p.add_argument("--shard-mb", type=positive_float, default=64, help="input split unit, and what a rerun redoes at most")
    p.add_argument("--tiktoken", action="store_true",
                   help="encode with tiktoken (same ids, faster) for GPT-2-style byte-level BPE; refused otherwise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at the output prefix")
    p.add_argument("--no-progress", action="store_true")
    return p


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    keys = list(dict.fromkeys(args.json_keys))
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # encode_batch_fast on all `--workers` threads
    for key in keys:
        prefix = args.output_prefix if len(keys) == 1 else f"{args.output_prefix}_{key}_document"
        cfg = PreprocessConfig(
            inputs=args.input, output_prefix=prefix, tokenizer=args.tokenizer, json_key=key,
            append_eod=args.append_eod, eod_token=args.eod_token, workers=args.workers, skip_bad=args.skip_bad,
            max_chars=args.max_chars, shard_bytes=max(1, int(args.shard_mb * (1 << 20))),
            progress=not args.no_progress, tiktoken=args.tiktoken, overwrite=args.overwrite,
        )
        manifest = preprocess(cfg)
        if manifest is not None:
            d = manifest["documents"]
            log.info(f"{prefix}: {d['written']} documents, {manifest['tokens_written']} tokens ({manifest['dtype']}); "
                     f"{d['skipped']} skipped, {manifest['blank_lines']} blank lines; {manifest['seconds']} s")
    return 0

