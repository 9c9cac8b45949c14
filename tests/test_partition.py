"""Reading a rank's slice of a flattened tensor from safetensors, and which slice is the rank's (ZeRO-3 hand-off)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megaeeve.model.partition import read_flat_range


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 3, 2), ()])
def test_read_flat_range_equals_flattened_slice(tmp_path, shape):
    tensor = torch.randn(shape, dtype=torch.float32).to(torch.bfloat16)
    save_file({"t": tensor}, str(tmp_path / "t.safetensors"))
    flat = tensor.reshape(-1)
    n = flat.numel()
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        for start in range(n + 1):
            for stop in range(start, n + 1):
                got = read_flat_range(f, "t", start, stop)
                assert got.dtype == torch.bfloat16 and torch.equal(got, flat[start:stop]), (start, stop)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3, 5])
def test_partition_of_is_deepspeeds_own_partition(tmp_path, world):
    """`partition_of` on parameters built under deepspeed.zero.Init (phi-2's 50,295-element bias: odd, and not a
    multiple of 3 or 5; tensors smaller than the world, whose later ranks hold nothing) names the elements DeepSpeed
    itself keeps on each rank, and the ranks' ranges cover each tensor once, in order."""
    out = tmp_path / "ranges.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                          "--master_port", str(port), str(Path(__file__).parent / "_partition_worker.py"), str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == world and [r["problems"] for r in ranks] == [[]] * world
    for name, (_, _, numel) in ranks[0]["ranges"].items():
        covered = [r["ranges"][name][:2] for r in ranks]
        assert covered[0][0] == 0 and covered[-1][1] == numel, name
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:])), (name, covered)

