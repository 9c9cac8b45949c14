"""`python -m megaeeve COMMAND ...`: the same as the `megaeeve` command."""

import sys

from megaeeve.cli import main

sys.exit(main())
