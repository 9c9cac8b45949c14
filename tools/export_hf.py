#!/usr/bin/env python
"""Export a megaeeve model directory (stage-0 or a stage's final/) to a plain Hugging Face model directory.

The same as `megaeeve export`; the code is megaeeve/cli/export_hf.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.export_hf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
