"""Run by tests/test_gpt_dataset.py: two gloo ranks share an index cache whose build outlasts the collective timeout."""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaeeve.data.index_cache import cached_arrays  # noqa: E402


def main(rank: int, store: str, cache: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=2))

    def slow_build() -> dict[str, np.ndarray]:
        time.sleep(5)  # longer than the 2 s collective timeout
        return {"a": np.arange(10)}

    arrays = cached_arrays(Path(cache), "test", description={"what": "slow"}, names=("a",), build=slow_build)
    dist.barrier()
    Path(f"{out}.rank{rank}").write_text(str(arrays["a"].tolist()))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
