"""bench/common.py: the peak memory every bench reports is the measured command's own, not the bench's."""

from __future__ import annotations

import sys

from bench.common import measure

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
