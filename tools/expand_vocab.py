#!/usr/bin/env python
"""Expand a base tokenizer with target-language tokens, refined by frequency (EEVE steps 1-7).

The same as `megaeeve expand-vocab`; the code is megaeeve/cli/expand_vocab.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.expand_vocab import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
