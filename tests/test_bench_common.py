"""bench/common.py: the peak memory every bench reports is the measured command's own, not the bench's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.common import measure

REPO = Path(__file__).resolve().parents[1]

ALLOCATE = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096]); print(len(b) >> 20)"


def test_peak_rss_is_the_commands_own_not_the_large_launching_process():
    """Linux carries a process's peak RSS over fork + exec, so a command started straight from a bench that holds
    a model reports at least the bench's size; measure (through rss_wrapped) reports what the command used."""
    held = bytearray(600 << 20)
    held[::4096] = b"y" * len(held[::4096])  # touch every page: 600 MiB resident in this process
    out, wall, small, cpu = measure([sys.executable, "-c", ALLOCATE, "0"])
    assert out.strip() == "0" and wall > 0 and cpu > 0
    assert small < 200, small  # a bare Python, far below the 600 MiB held here
    _, _, large, _ = measure([sys.executable, "-c", ALLOCATE, "300"])
    assert 300 <= large < 500, large
    del held


def test_a_command_that_cannot_start_is_named_with_its_error(tmp_path):
    """The wrapper writes no usage report when the command cannot be started: the error says which command and
    why, where it used to be a missing-file error about the report."""
    with pytest.raises(RuntimeError, match=r"(?s)/no/such/program --flag did not run.*No such file or directory"):
        measure(["/no/such/program", "--flag"])
    sys.path.insert(0, str(REPO / "bench"))
    import bench_vs_trainer

    with pytest.raises(RuntimeError, match=r"(?s)/no/such/rank-program did not run.*No such file or directory"):
        bench_vs_trainer.launch(["/no/such/rank-program"], 1, tmp_path / "log")
