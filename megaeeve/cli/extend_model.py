"""Extend a base causal LM to an expanded tokenizer: split embeddings + EEVE init -> stage-0 model directory.

    python tools/extend_model.py --base-model DIR_OR_GGUF --base-tokenizer TOKENIZER --tokenizer DIR --output DIR \
        [--init fit|eeve|mean|random] [--prior counts|model|none] [--fit-input-steps N] [--fit-output-steps N] [--fit-output-rank R]
        [--fit-device auto|cpu|cuda] [--fit-samples N] [--fit-english-samples N] [--fit-text FILE ...]
        [--fit-english FILE ...]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from megaeeve.errors import one_line_errors
from megaeeve.log import logger
from megaeeve.model.fit import PRIORS, FitSettings
from megaeeve.model.init import INIT_METHODS

log = logger(__name__)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
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
    parser.add_argument("--init", choices=INIT_METHODS, default="fit",
                        help="new rows: fit (the default: eeve's rows fitted to the base model, megaeeve/model/"
                             "fit.py), eeve (the card's recipe exactly: mean of the token's base pieces; output row "
                             "of the first piece), mean (mean of all base rows + noise, LLaMA-Factory's), random "
                             "(normal, std config.initializer_range, transformers' resize default)")
    defaults = FitSettings()
    parser.add_argument("--prior", choices=PRIORS, default=defaults.prior,
                        help="--init fit's output prior: counts (each new token and its first piece get the log of "
                             "their share of the piece's emissions, from expansion_report.json), model (shares "
                             "from the base model's likelihood of each token's pieces after the first, on the "
                             "fitting text) or none")
    parser.add_argument("--fit-input-norm", type=float, default=defaults.input_norm,
                        help="--init fit: new input rows rescaled to this multiple of the base rows' mean norm "
                             "(0: the mean of the pieces as it is, EEVE's)")
    parser.add_argument("--fit-input-steps", type=int, default=defaults.input_steps,
                        help="--init fit: Adam steps fitting the new input rows so that the model's next-token "
                             "distribution is the base's after the token's pieces (0: off; each step reads "
                             f"{defaults.input_batch} samples of {defaults.sample_length} tokens)")
    parser.add_argument("--fit-device", default=defaults.device,
                        help="--init fit: where the input fit runs: auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--fit-output-steps", type=int, default=defaults.output_steps,
                        help="--init fit: Adam steps fitting the new output rows by softmax regression (0: off)")
    parser.add_argument("--fit-output-rank", type=int, default=defaults.output_rank,
                        help="--init fit: fit the output rows through a map of this rank shared by every new token "
                             "(row = start + input row x A B^T) instead of free rows (0)")
    parser.add_argument("--fit-samples", type=int, default=defaults.samples,
                        help=f"--init fit: samples of {defaults.sample_length} tokens of target-language text")
    parser.add_argument("--fit-english-samples", type=int, default=defaults.english_samples,
                        help=f"--init fit: samples of {defaults.sample_length} tokens of English the fold direction and "
                             "the output fit see, so that the new rows learn to stay out of English contexts")
    parser.add_argument("--fit-text", nargs="+", metavar="FILE",
                        help="--init fit: target-language text (default: the corpus the tokenizer was expanded on)")
    parser.add_argument("--fit-english", nargs="+", metavar="FILE",
                        help="--init fit: English text (default: CPython's pydoc topics)")
    parser.add_argument("--allow-no-new-tokens", action="store_true",
                        help="accept a tokenizer without new tokens (the base's own): a model directory with no "
                             "new rows, to train the base vocabulary with the same trainer (no-expansion baseline)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    positive = ("fit_samples", "fit_english_samples")
    for flag in ("fit_input_norm", "fit_input_steps", "fit_output_steps", "fit_output_rank", *positive):
        if getattr(args, flag) < (1 if flag in positive else 0):
            parser.error(f"--{flag.replace('_', '-')} must be {'positive' if flag in positive else '>= 0'}, "
                         f"got {getattr(args, flag)}")

    if args.fit_device != "auto":
        import torch

        try:
            device = FitSettings(device=args.fit_device).torch_device()
        except RuntimeError:
            parser.error(f"--fit-device must be auto, cpu, cuda or cuda:N, got {args.fit_device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--fit-device {args.fit_device}: no GPU is visible here (use auto or cpu)")

    from megaeeve.model.extend import describe, extend_model

    meta = extend_model(args.base_model, args.base_tokenizer, tokenizer=args.tokenizer, output=args.output,
                        pad_vocab_to_multiple_of=args.pad_vocab_to_multiple_of, overwrite=args.overwrite,
                        init=args.init, allow_no_new_tokens=args.allow_no_new_tokens,
                        fit=FitSettings(prior=args.prior, input_norm=args.fit_input_norm, input_steps=args.fit_input_steps,
                                        device=args.fit_device,
                                        output_steps=args.fit_output_steps, output_rank=args.fit_output_rank,
                                        samples=args.fit_samples, english_samples=args.fit_english_samples),
                        fit_text=args.fit_text, fit_english=args.fit_english)
    log.info(describe(meta))
    log.info(f"wrote {args.output}")
    return 0

