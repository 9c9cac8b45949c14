"""Index arrays built once (rank 0) with numpy and cached on disk under a hash of their inputs.

Every rank then memory-maps the same files, so a job of many ranks does the index arithmetic once,
and a rerun with the same inputs (data, seed, sizes) skips it entirely. A change to any input
changes the hash, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch.distributed as dist

from megaeeve.atomic import atomic_file, write_json


def description_hash(description: Mapping[str, Any]) -> str:
    return hashlib.md5(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def array_digest(a: np.ndarray) -> str:
    """A content hash of an array (e.g. a dataset's sequence lengths) to put into a description."""
    return hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest()


def _is_builder() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def cached_arrays(
    cache_dir: Path, kind: str, description: Mapping[str, Any], names: tuple[str, ...],
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load `names` arrays for `description` from `cache_dir`, building them on rank 0 if absent.

    Files: {md5}-{kind}-{name}.npy and {md5}-{kind}-description.json, each written atomically,
    the description last (its presence marks a complete entry). All ranks wait at a barrier
    and then memory-map the arrays read-only.
    """
    cache_dir = Path(cache_dir)
    key = f"{description_hash(description)}-{kind}"
    marker = cache_dir / f"{key}-description.json"
    if _is_builder() and not marker.exists():
        arrays = build()
        for name in names:
            with atomic_file(cache_dir / f"{key}-{name}.npy") as f:
                np.save(f, arrays[name], allow_pickle=False)
        write_json(marker, dict(description))
    if dist.is_initialized():
        dist.barrier()
    return {name: np.load(cache_dir / f"{key}-{name}.npy", mmap_mode="r", allow_pickle=False) for name in names}
