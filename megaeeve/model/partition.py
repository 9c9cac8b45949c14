"""Each ZeRO-3 rank reads and writes only its own partition of a tensor.

ZeRO-3 flattens a parameter of `numel` elements and gives partition rank r the elements
[r * size, (r + 1) * size) with size = ceil(numel / world); the last partition is zero-padded past
`numel`. DeepSpeed's full-tensor setters narrow the full value at `r * size` for `size` elements,
which overruns it whenever numel is not a multiple of the world size (phi-2's 50,295-row bias on
2 ranks). So the hand-off works per rank: it reads the rows of safetensors that cover its range
(`get_slice`), keeps the range, zero-pads it to `size` and sets the local partition. No rank reads
a whole tensor it does not own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Partition:
    """A rank's slice of a flattened parameter: [start, stop) of `numel`, stored padded to `size`."""

    start: int
    stop: int
    size: int

    @property
    def valid(self) -> int:
        return max(0, self.stop - self.start)


def partition_of(param: torch.Tensor) -> Partition:
    """This rank's partition of a ZeRO-3 parameter (the arithmetic of DeepSpeed's _partition_param)."""
    numel = int(param.ds_numel)
    group = param.ds_process_group
    rank, world = dist.get_rank(group=group), dist.get_world_size(group=group)
    size = math.ceil(numel / world)
    assert size == param.ds_tensor.ds_numel, f"partition size {size} != ZeRO's {param.ds_tensor.ds_numel}"
    start = min(rank * size, numel)
    return Partition(start, min(start + size, numel), size)


def read_flat_range(f: Any, key: str, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of the flattened tensor `key` of an open safetensors file.

    Reads only the rows (first dimension) that cover the range, at most two rows more than needed.
    """
    sl = f.get_slice(key)
    shape = sl.get_shape()
    if not shape:  # a 0-dim tensor: one element
        return f.get_tensor(key).reshape(1)[start:stop]
    row = math.prod(shape[1:]) or 1
    first = start // row
    last = max(first, -(-stop // row))
    rows = sl[first:last].reshape(-1)
    return rows[start - first * row: stop - first * row]


def read_partition(f: Any, key: str, param: torch.Tensor) -> torch.Tensor:
    """This rank's partition of `key`, zero-padded to ZeRO's partition size."""
    part = partition_of(param)
    values = read_flat_range(f, key, part.start, part.stop)
    padded = torch.zeros(part.size, dtype=values.dtype)
    padded[: part.valid] = values
    return padded


def local_values(param: torch.Tensor) -> torch.Tensor:
    """The unpadded elements this rank holds of a ZeRO-3 parameter (its working copy)."""
    return param.ds_tensor.data[: partition_of(param).valid]
