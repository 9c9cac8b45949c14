"""A torch extension build killed mid-way leaves its lock file, and torch then makes every later rank wait for it
forever without a word. A stage refuses to start instead, naming the file; a build in progress (a fresh lock) and
another project's extensions are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from megaeeve.training.stage import STALE_BUILD_LOCK_S, stale_build_locks


def _lock(root, op: str, age_s: float):
    lock = root / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_a_killed_builds_lock_stops_the_stage_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = _lock(tmp_path, "deepspeed_shm_comm", STALE_BUILD_LOCK_S + 3600)
    fresh = _lock(tmp_path, "cpu_adam", 5)  # a build in progress on another rank
    other = _lock(tmp_path, "someone_elses_op", STALE_BUILD_LOCK_S + 3600)  # not a DeepSpeed op
    found = stale_build_locks()
    assert stale in found and fresh not in found and other not in found
    assert found[stale] == pytest.approx(STALE_BUILD_LOCK_S + 3600, abs=60)
    # The stage's own entry point, in a process of its own: without the check it hangs on the lock (hence the
    # timeout), with it it ends at once with the file's name and what to do.
    try:
        run = subprocess.run([sys.executable, "-c", "from megaeeve.training.stage import init_distributed; "
                              "init_distributed(5)"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "DS_ACCELERATOR": "cpu"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"init_distributed waited on {stale} instead of refusing to start")
    assert run.returncode != 0
    assert "StageError" in run.stderr and str(stale) in run.stderr and "70 minutes ago" in run.stderr
    assert f"rm {stale}" in run.stderr
    stale.unlink()
    assert stale_build_locks() == {}


def test_only_the_directory_torch_builds_in_is_searched(tmp_path, monkeypatch):
    import torch.utils.cpp_extension

    root = tmp_path / "root"  # torch's default: <root>/<python + accelerator>/<op>/lock
    in_root = _lock(root / "py311_cpu", "deepspeed_shm_comm", STALE_BUILD_LOCK_S + 60)
    monkeypatch.setattr(torch.utils.cpp_extension, "get_default_build_root", lambda: str(root))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert list(stale_build_locks()) == [in_root]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "chosen"))  # torch then ignores the default root
    assert stale_build_locks() == {}
