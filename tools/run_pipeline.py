#!/usr/bin/env python
"""Run the whole EEVE pipeline on the bundled default (or your own base model) and write a report.

The same as `megaeeve pipeline`; the code is megaeeve/cli/run_pipeline.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.cli.run_pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
