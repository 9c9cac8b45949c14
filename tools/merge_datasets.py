#!/usr/bin/env python
"""Concatenate MMIDIDX datasets (same dtype), in the order given, into one; streaming, atomic.

The same as `megaeeve merge`; the code is megaeeve/cli/merge_datasets.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.merge_datasets import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
