"""Index arrays built once (global rank 0) with numpy and cached on disk under a hash of their inputs.

Every rank then memory-maps the same files, so a job of many ranks does the index arithmetic once,
and a rerun with the same inputs (data, seed, sizes) skips it entirely. A change to any input
changes the hash, so a stale cache is never read.

The cache directory (RUN.yaml `data.cache_dir`, default run_dir/index-cache) must be on a file system
that every node sees (the run directory usually is). The builder publishes each entry atomically,
its description file last; the other ranks wait for that file, not in a collective, so a build that
takes longer than the collective timeout (100 GB of data) does not kill the job, and they say what
they wait for while they wait. The builder is global rank 0, or the only process where no process group exists
(tools and tests build indices without one).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from megaeeve.atomic import atomic_file, write_json
from megaeeve.log import logger
from megaeeve.training.collectives import rank

log = logger(__name__)


def description_hash(description: Mapping[str, Any]) -> str:
    return hashlib.md5(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def array_digest(a: np.ndarray) -> str:
    """A content hash of an array (e.g. a dataset's sequence lengths) to put into a description."""
    return hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest()


def _wait_for(marker: Path, poll_s: float = 0.2, report_every_s: float = 60.0) -> None:
    started = last = time.monotonic()
    while not marker.exists():
        time.sleep(poll_s)
        if time.monotonic() - last >= report_every_s:
            last = time.monotonic()
            log.warning(f"rank {rank()}: waiting {last - started:.0f} s for {marker}, built by rank 0 "
                        f"(data.cache_dir must be on a file system all nodes share)")


def cached_arrays(
    cache_dir: Path, kind: str, *, description: Mapping[str, Any], names: tuple[str, ...],
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load `names` arrays for `description` from `cache_dir`, building them on global rank 0 if absent.

    Files: {md5}-{kind}-{name}.npy and {md5}-{kind}-description.json, each written atomically,
    the description last (its presence marks a complete entry). The other ranks wait for the
    description file, then every rank memory-maps the arrays read-only.
    """
    cache_dir = Path(cache_dir)
    key = f"{description_hash(description)}-{kind}"
    marker = cache_dir / f"{key}-description.json"
    if not marker.exists():
        if rank() == 0:
            arrays = build()
            for name in names:
                with atomic_file(cache_dir / f"{key}-{name}.npy") as f:
                    np.save(f, arrays[name], allow_pickle=False)
            write_json(marker, dict(description))
        else:
            _wait_for(marker)
    return {name: np.load(cache_dir / f"{key}-{name}.npy", mmap_mode="r", allow_pickle=False) for name in names}
