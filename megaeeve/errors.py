"""One error hierarchy: what megaeeve reports to a user as one `error:` line and an exit code.

Every error a user can cause (bad input, a bad config, a refused operation) subclasses `MegaeeveError`, and
keeps the builtin base it always had (ValueError, RuntimeError, FileExistsError) so callers catching those still
do. The command-line entry points catch it in one place (`one_line_errors`); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class MegaeeveError(Exception):
    """Base of every error megaeeve reports as one line."""

    exit_code: int = 2  # bad input or a refused operation


class OutputExistsError(MegaeeveError, FileExistsError):
    """An output is there already and --overwrite was not given."""


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
    """A command's `main`: a MegaeeveError, or an OSError of the file system it works on (unwritable output, full
    disk), becomes `error: ...` on stderr and an exit code instead of a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (MegaeeveError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return getattr(e, "exit_code", MegaeeveError.exit_code)

    return run
