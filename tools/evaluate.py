#!/usr/bin/env python
"""Evaluate a model on named texts: bits per character / byte, characters per token, generation speed.

The same as `megaeeve evaluate` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/evaluate.py.
"""

from megaeeve.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
