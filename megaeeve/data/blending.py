"""Blend several packed datasets by weight into one sample stream.

Dataset k's j-th sample is placed at "time" (j + 0.5) / w_k and the stream is the merge of all
datasets by time, so every prefix of the stream holds each dataset in proportion to its weight
(within one sample), like Megatron's greedy blending, but computed with one numpy sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from megaeeve.data.gpt_dataset import PackedDataset
from megaeeve.data.index_cache import cached_arrays


def samples_per_dataset(weights: Sequence[float], size: int) -> list[int]:
    """How many samples each dataset must provide for a blend of `size` samples."""
    total = float(sum(weights))
    return [math.ceil(size * w / total) + 1 for w in weights]


def blend_indices(weights: Sequence[float], size: int) -> dict[str, np.ndarray]:
    """dataset_index (int16) and dataset_sample_index (int64) of the first `size` blended samples."""
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    counts = samples_per_dataset(weights, size)
    times = np.concatenate([(np.arange(n) + 0.5) / w[k] for k, n in enumerate(counts)])
    owner = np.concatenate([np.full(n, k, dtype=np.int16) for k, n in enumerate(counts)])
    local = np.concatenate([np.arange(n, dtype=np.int64) for n in counts])
    order = np.argsort(times, kind="stable")[:size]
    return {"dataset_index": owner[order], "dataset_sample_index": local[order]}


@dataclass
class BlendedDataset:
    """Sample i of the blend: (dataset number, tokens)."""

    datasets: Sequence[PackedDataset]
    dataset_index: np.ndarray
    dataset_sample_index: np.ndarray

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        k = int(self.dataset_index[i])
        return k, self.datasets[k][int(self.dataset_sample_index[i])]


def blended_dataset(datasets: Sequence[PackedDataset], weights: Sequence[float], *, size: int,
                    cache_dir: Path, description: dict) -> BlendedDataset:
    """Blend `datasets` (built with samples_per_dataset(weights, size) samples each)."""
    arrays = cached_arrays(
        cache_dir, "blend", description={**description, "weights": list(weights), "size": size},
        names=("dataset_index", "dataset_sample_index"), build=lambda: blend_indices(weights, size),
    )
    return BlendedDataset(datasets, **arrays)
