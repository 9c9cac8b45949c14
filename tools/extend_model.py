#!/usr/bin/env python
"""Extend a base causal LM to an expanded tokenizer: split embeddings + EEVE init -> stage-0 model directory.

The same as `megaeeve extend` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/extend_model.py.
"""

from megaeeve.cli.extend_model import main

if __name__ == "__main__":
    raise SystemExit(main())
