#!/usr/bin/env python
"""Tokenize JSONL / text / Parquet / Arrow corpora into one Megatron MMIDIDX dataset (PREFIX.bin/.idx).

The same as `megaeeve preprocess`; the code is megaeeve/cli/preprocess_data.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.preprocess_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
