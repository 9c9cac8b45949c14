#!/usr/bin/env python
"""Tokenize JSONL / text / Parquet / Arrow corpora into one Megatron MMIDIDX dataset (PREFIX.bin/.idx).

The same as `megaeeve preprocess` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/preprocess_data.py.
"""

from megaeeve.cli.preprocess_data import main

if __name__ == "__main__":
    raise SystemExit(main())
