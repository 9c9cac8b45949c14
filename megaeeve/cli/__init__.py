"""The `megaeeve` command: one subcommand per pipeline step (`python -m megaeeve` is the same).

    megaeeve expand-vocab | extend | preprocess | merge | train | export | evaluate | report | pipeline  [ARGS]

Each subcommand is a module here with `main(argv, prog) -> int`; tools/*.py are thin front ends to the
same modules, and `deepspeed megaeeve/train.py ...` runs the trainer directly. Bad input exits 2
with one `error:` line.
"""

from __future__ import annotations

import argparse
import importlib

from megaeeve import __version__

COMMANDS = {  # subcommand -> module in megaeeve.cli, and what it does
    "expand-vocab": ("expand_vocab", "grow the target-language tokenizer on top of the base one"),
    "extend": ("extend_model", "extend the base model to the expanded tokenizer: the stage-0 directory"),
    "preprocess": ("preprocess_data", "tokenize corpora into Megatron .bin/.idx datasets"),
    "merge": ("merge_datasets", "concatenate .bin/.idx datasets"),
    "train": ("train", "train one stage with DeepSpeed ZeRO-3 (or --dry-run)"),
    "export": ("export_hf", "a stage's final/ as a plain Hugging Face model"),
    "evaluate": ("evaluate", "bits per character, characters per token and generation speed of any model"),
    "report": ("report", "the report of a run: tokenizer, losses, frozen checks, evaluations, samples"),
    "pipeline": ("run_pipeline", "the whole pipeline, step by step, resumable"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="megaeeve", description=__doc__.split("\n\n")[0],
        epilog="commands:\n" + "\n".join(f"  {name:13s} {what}" for name, (_, what) in COMMANDS.items())
        + "\n\n`megaeeve COMMAND --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"megaeeve {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    module = importlib.import_module(f"megaeeve.cli.{COMMANDS[ns.command][0]}")
    return module.main(ns.args, prog=f"megaeeve {ns.command}")
