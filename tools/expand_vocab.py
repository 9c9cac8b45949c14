#!/usr/bin/env python
"""Expand a base tokenizer with target-language tokens, refined by frequency (EEVE steps 1-7).

The same as `megaeeve expand-vocab` (the package installed: tools/setup_env.sh); the code is megaeeve/cli/expand_vocab.py.
"""

from megaeeve.cli.expand_vocab import main

if __name__ == "__main__":
    raise SystemExit(main())
