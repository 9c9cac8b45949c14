#!/usr/bin/env python
"""Concatenate MMIDIDX datasets (same dtype), in the order given, into one; streaming, atomic.

The same as `megaeeve merge` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/merge_datasets.py.
"""

from megaeeve.cli.merge_datasets import main

if __name__ == "__main__":
    raise SystemExit(main())
