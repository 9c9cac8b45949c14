"""The offline tools' shared helpers: progress lines off a terminal, and one MPI launcher list."""

from __future__ import annotations

import pytest

from megaeeve import mpi
from megaeeve.progress import Progress


def test_off_a_terminal_progress_is_plain_lines_on_stderr(capsys):
    progress = Progress("tokenizing", parts=4, every=0.0)
    progress.update(10, 1000)
    progress.part_done()
    progress.update(10, 1000)
    progress.close()
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 3 and "\r" not in err
    assert all(line.startswith("tokenizing: ") and "docs/s" in line and "tokens/s" in line for line in lines)
    assert "ETA" not in lines[0] and "ETA" in lines[1]  # once a part has finished
    assert lines[2].startswith("tokenizing: 20 docs") and lines[2].endswith(" s")


def test_disabled_progress_says_nothing(capsys):
    progress = Progress("counting", parts=1, enabled=False, every=0.0)
    progress.update(5, 50)
    progress.close()
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("var", mpi.ENV_VARS)
def test_every_launcher_variable_means_mpi(monkeypatch, var):
    for v in mpi.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    assert not mpi.launched_by_mpi() and mpi.mpi_world() is None
    monkeypatch.setenv(var, "1")
    assert mpi.launched_by_mpi()


def test_both_tools_share_the_list():
    """Each tool used to keep its own list; the union covers every variable either accepted."""
    assert {"PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"} <= set(mpi.ENV_VARS)
