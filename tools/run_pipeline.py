#!/usr/bin/env python
"""Run the whole EEVE pipeline on the bundled default (or your own base model) and write a report.

The same as `megaeeve pipeline` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/run_pipeline.py.
"""

from megaeeve.cli.run_pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
