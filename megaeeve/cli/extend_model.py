"""Extend a base causal LM to an expanded tokenizer: split embeddings + EEVE init -> stage-0 model directory.

    python tools/extend_model.py --base-model DIR_OR_GGUF --base-tokenizer TOKENIZER --tokenizer DIR --output DIR \
        [--init eeve|mean|random]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from megaeeve.errors import one_line_errors
from megaeeve.model.init import INIT_METHODS


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True, help="Hugging Face model directory or .gguf file")
    parser.add_argument("--base-tokenizer", required=True,
                        help="base tokenizer: tokenizer.json, HF tokenizer directory or .gguf file")
    parser.add_argument("--tokenizer", required=True, help="expanded tokenizer directory (tools/expand_vocab.py)")
    parser.add_argument("--output", required=True, help="stage-0 model directory to create")
    parser.add_argument("--pad-vocab-to-multiple-of", type=int, default=64,
                        help="round the model vocabulary up to a multiple of this (padding rows are zero and "
                             "never predicted; 1 = no padding)")
    parser.add_argument("--init", choices=INIT_METHODS, default="eeve",
                        help="new rows: eeve (mean of the token's base pieces; output row of the first piece), "
                             "mean (mean of all base rows + noise, LLaMA-Factory's), random (normal, std "
                             "config.initializer_range, transformers' resize default)")
    parser.add_argument("--allow-no-new-tokens", action="store_true",
                        help="accept a tokenizer without new tokens (the base's own): a model directory with no "
                             "new rows, to train the base vocabulary with the same trainer (no-expansion baseline)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)

    from megaeeve.model.extend import describe, extend_model

    meta = extend_model(args.base_model, args.base_tokenizer, args.tokenizer, args.output,
                        pad_vocab_to_multiple_of=args.pad_vocab_to_multiple_of, overwrite=args.overwrite,
                        init=args.init, allow_no_new_tokens=args.allow_no_new_tokens)
    print(describe(meta))
    print(f"wrote {args.output}")
    return 0

