#!/usr/bin/env python
"""Extend a base causal LM to an expanded tokenizer: split embeddings + EEVE init -> stage-0 model directory.

The same as `megaeeve extend`; the code is megaeeve/cli/extend_model.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.extend_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
