"""The package logger: rank prefixes, quiet non-zero ranks, the stdout/stderr split, MEGAEEVE_LOG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Two setups in one process, as a training rank does (import time, then once it knows its rank).
SCRIPT = """
from megaeeve import log
log.setup()
log.setup(rank=RANK, world=3)
lg = log.logger("megaeeve.x")
lg.info("info line")
lg.warning("warn line")
lg.info("status line", extra=log.STDERR)
"""


def run(rank: int, level: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **({"MEGAEEVE_LOG": level} if level else {})}
    return subprocess.run([sys.executable, "-c", SCRIPT.replace("RANK", str(rank))], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_rank_zero_logs_info_to_stdout_and_warnings_to_stderr():
    done = run(0, None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[rank 0] info line\n"
    assert done.stderr == "[rank 0] warning: warn line\n[rank 0] status line\n"


def test_other_ranks_keep_only_warnings_unless_debug():
    quiet, loud = run(2, None), run(2, "debug")
    assert quiet.stdout == "" and quiet.stderr == "[rank 2] warning: warn line\n"
    assert loud.stdout == "[rank 2] info line\n" and "[rank 2] status line" in loud.stderr


def test_an_unknown_level_is_named_once_and_logging_goes_on_at_info():
    done = run(0, "verbose")
    assert done.returncode == 0 and done.stdout == "[rank 0] info line\n"
    lines = done.stderr.splitlines()
    assert lines.count("warning: MEGAEEVE_LOG='verbose' is not one of debug, info, warning, error; logging at info") == 1
