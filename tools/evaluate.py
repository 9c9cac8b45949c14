#!/usr/bin/env python
"""Evaluate a model on named texts: bits per character / byte, characters per token, generation speed.

The same as `megaeeve evaluate`; the code is megaeeve/cli/evaluate.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
