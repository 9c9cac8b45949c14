"""Which samples each rank reads: a pure function of (consumed samples, micro batch, rank, world).

The global stream is read in order, `micro * world` samples per micro step, rank r taking the
r-th slice (as Megatron's pretraining sampler). Saving `consumed_samples` in the checkpoint is
therefore enough to resume mid-epoch at the exact sample.
"""

from __future__ import annotations


def micro_batch_indices(consumed_samples: int, micro: int, rank: int, world: int) -> range:
    """Sample indices of this rank's next micro batch, given samples consumed by all ranks so far."""
    start = consumed_samples + rank * micro
    return range(start, start + micro)
