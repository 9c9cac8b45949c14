#!/usr/bin/env python
"""Export a megaeeve model directory (stage-0 or a stage's final/) to a plain Hugging Face model directory.

The same as `megaeeve export` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/export_hf.py.
"""

from megaeeve.cli.export_hf import main

if __name__ == "__main__":
    raise SystemExit(main())
