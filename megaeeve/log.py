"""One logger for the whole package: plain lines, rank-aware, the same in a terminal and in a SLURM `.out` file.

Every module logs through `log = logger(__name__)` (a child of the `megaeeve` logger); nothing in the
package calls `print` except the command line's final `error:` line (megaeeve/errors.py). Why one logger:
a multi-rank job writes one stream per rank into one `.out` file, so every line must say which rank wrote it,
and the non-zero ranks must be quiet unless asked (`MEGAEEVE_LOG=debug`), or each line appears N times.

- INFO and DEBUG go to stdout, WARNING and above to stderr (the split the package's output always had, so a
  caller reading stdout for results is not disturbed by warnings). Warnings and errors carry `warning: ` and
  `error: ` in front, as a user reads them on a terminal. An INFO line logged with `extra=STDERR` (progress and
  status lines, where a progress bar would draw) goes to stderr too, with no prefix.
- `setup(rank, world)` is called once a process knows its rank (the trainer, after torch.distributed is up):
  with more than one rank every line starts with `[rank R] `; rank 0 logs at the chosen level, the others only
  warnings, unless the level is DEBUG, where every rank logs everything.
- Until `setup` is called (library use, single-process tools) the package logs at INFO as rank 0 of 1.
- The streams are looked up when a line is written, not when the handler is made, so a redirected
  sys.stdout (pytest's capture, contextlib.redirect_stdout) receives the lines.

Progress bars are tqdm's, on a terminal only (`on_terminal`); elsewhere long work logs plain progress lines.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

ROOT = "megaeeve"
STDERR = {"stderr": True}  # `log.info(..., extra=STDERR)`: a progress or status line, on stderr beside the bars
LEVEL_ENV = "MEGAEEVE_LOG"  # debug | info | warning | error


class _Formatter(logging.Formatter):
    """`[rank R] ` when there is more than one rank, `warning: ` / `error: ` before what a user must act on."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] " if world > 1 else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            text = f"error: {text}"
        elif record.levelno >= logging.WARNING:
            text = f"warning: {text}"
        return self.prefix + text


class _Streams(logging.Handler):
    """stdout below WARNING, stderr from it up; both looked up per line (see the module docstring)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING or getattr(record, "stderr", False) else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a logging failure never takes the job down (logging's own rule)
            self.handleError(record)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def level_from_env() -> int:
    """The level MEGAEEVE_LOG names (default INFO). An unknown name logs at INFO and says so on stderr (a typo in
    a logging variable must not stop a training job, nor pass unnoticed)."""
    name = os.environ.get(LEVEL_ENV, "info").strip().lower()
    if name not in _LEVELS:
        _warn_unknown_level(name)
        return logging.INFO
    return _LEVELS[name]


@functools.lru_cache(maxsize=None)
def _warn_unknown_level(name: str) -> None:
    """Once per process: setup() runs again when a stage learns its rank."""
    sys.stderr.write(f"warning: {LEVEL_ENV}={name!r} is not one of {', '.join(_LEVELS)}; logging at info\n")


def setup(rank: int = 0, world: int = 1, level: int | None = None) -> logging.Logger:
    """(Re)configure the package's logger for this process's rank; returns it. Idempotent."""
    level = level_from_env() if level is None else level
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _Streams()
    handler.setFormatter(_Formatter(rank, world))
    logger.addHandler(handler)
    logger.propagate = False  # one line per message, whatever the application's root logger does
    logger.setLevel(level if rank == 0 or level <= logging.DEBUG else max(level, logging.WARNING))
    return logger


def logger(name: str) -> logging.Logger:
    """A module's logger (`log = logger(__name__)`): importing it from here guarantees the package logger is set up."""
    return logging.getLogger(name)


def on_terminal() -> bool:
    """Whether progress may be a tqdm bar: stderr (where tqdm draws) is a terminal."""
    return sys.stderr.isatty()


setup()
