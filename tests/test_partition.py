"""Reading a rank's slice of a flattened tensor from safetensors (the per-rank ZeRO-3 hand-off)."""

from __future__ import annotations

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


def test_partitions_of_uneven_sizes_cover_the_tensor_once(tmp_path):
    """The ranges ZeRO-3 gives ranks of an uneven tensor (ceil(numel / world) each, the last one short,
    later ones empty) read back to the whole tensor."""
    tensor = torch.arange(50295, dtype=torch.float32)  # phi-2's base vocabulary: odd, and not a multiple of 4
    save_file({"bias": tensor}, str(tmp_path / "b.safetensors"))
    with safe_open(str(tmp_path / "b.safetensors"), framework="pt") as f:
        for world in (2, 3, 4, 8, 64):
            size = -(-tensor.numel() // world)
            parts = [read_flat_range(f, "bias", min(r * size, 50295), min((r + 1) * size, 50295)) for r in range(world)]
            assert torch.equal(torch.cat(parts), tensor), world
