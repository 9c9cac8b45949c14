"""`megaeeve train`: one stage with DeepSpeed ZeRO-3 (megaeeve/train.py; torchrun/deepspeed launch that file)."""

from __future__ import annotations


def build_parser(prog: str | None = None):
    from megaeeve.train import build_parser

    return build_parser(prog)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from megaeeve.train import main as train

    return train(argv, prog)
