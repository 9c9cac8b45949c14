"""Fixed-length training samples packed across document boundaries (Megatron GPTDataset style).

A sample is `seq_length + 1` consecutive tokens of a stream of shuffled documents (inputs are the
first `seq_length`, labels the last); consecutive samples overlap by one token, so no token is
wasted at sample edges. Three arrays describe the stream, all numpy, cached (see index_cache.py):

- document_index: the order of documents (whole shuffled epochs, or weighted draws, see below);
- sample_index[i] = (position in document_index, token offset) where sample i starts;
- shuffle_index: a permutation of the samples, from the seed.

Card step 8 ("training data biased to include more texts with new tokens"): with
`new_token_bias` b > 0, documents are drawn with replacement with probability proportional to
1 + b * (share of the document's tokens whose id >= base vocabulary size). The share is read
from the token data itself in one vectorised pass over the .bin (IndexedDataset.tokens_at_least),
once, and cached. b = 0 gives plain shuffled epochs.

The held-out documents are chosen by a hash of their index, not as the tail of the file, so a
prefix made by concatenating corpora holds out documents of each of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from megaeeve.data.index_cache import array_digest, cached_arrays
from megaeeve.errors import DataError


class TokenDocuments(Protocol):
    """What packing needs of an indexed dataset (megaeeve.data.indexed.IndexedDataset fits)."""

    sequence_lengths: np.ndarray

    def __len__(self) -> int: ...

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray: ...

    def tokens_at_least(self, threshold: int) -> np.ndarray: ...


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed, well-spread hash of each uint64 (no seed, no state)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def document_split(num_documents: int, valid_fraction: float, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) document ids, each sorted: the round(N * valid_fraction) documents (at least one) with
    the smallest hash of their index are held out. Spread over the whole prefix, the same on every run."""
    n_valid = max(1, round(num_documents * valid_fraction))
    if num_documents - n_valid < 1:
        raise DataError(f"{prefix}: {num_documents} document(s) cannot give both a train and a valid split")
    ids = np.arange(num_documents, dtype=np.int64)
    keys = _mix64(ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    valid = np.zeros(num_documents, dtype=bool)
    valid[np.argpartition(keys, n_valid - 1)[:n_valid]] = True
    return ids[~valid], ids[valid]


def build_indices(
    lengths: np.ndarray, documents: np.ndarray, *, num_samples: int, seq_length: int, seed: int,
    doc_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """document_index, sample_index and shuffle_index for `num_samples` samples (see module doc)."""
    rng = np.random.RandomState(seed % 2**32)
    lengths = np.asarray(lengths, dtype=np.int64)
    needed = num_samples * seq_length + 1
    per_epoch = int(lengths[documents].sum())
    if per_epoch == 0:
        raise DataError("the split has no tokens")
    if doc_weights is None:
        epochs = math.ceil(needed / per_epoch)
        doc_index = np.concatenate([rng.permutation(documents) for _ in range(epochs)])
    else:
        p = doc_weights / doc_weights.sum()
        mean_len = float((p * lengths[documents]).sum())
        if mean_len == 0:
            raise DataError("the weighted documents have no tokens")
        chunks: list[np.ndarray] = []
        total = 0
        while total < needed:
            draw = rng.choice(documents, size=max(16, math.ceil(1.1 * (needed - total) / mean_len)), p=p)
            chunks.append(draw)
            total += int(lengths[draw].sum())
        doc_index = np.concatenate(chunks)
    ends = np.cumsum(lengths[doc_index])
    starts = np.arange(num_samples, dtype=np.int64) * seq_length
    pos = np.searchsorted(ends, starts, side="right")
    offsets = starts - (ends[pos] - lengths[doc_index[pos]])
    return {
        "document_index": doc_index,
        "sample_index": np.stack([pos, offsets], axis=1),
        "shuffle_index": rng.permutation(num_samples),
    }


@dataclass
class PackedDataset:
    """`num_samples` packed samples of `seq_length + 1` tokens from one dataset's document split."""

    docs: TokenDocuments
    lengths: np.ndarray
    document_index: np.ndarray
    sample_index: np.ndarray
    shuffle_index: np.ndarray
    seq_length: int

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def __getitem__(self, i: int) -> np.ndarray:
        pos, offset = (int(v) for v in self.sample_index[int(self.shuffle_index[i])])
        need = self.seq_length + 1
        parts = []
        while need:
            doc = int(self.document_index[pos])
            take = min(int(self.lengths[doc]) - offset, need)
            if take > 0:
                parts.append(self.docs.get(doc, offset, take))
                need -= take
            pos += 1
            offset = 0
        return np.concatenate(parts).astype(np.int64)


def packed_dataset(
    docs: TokenDocuments, prefix: str | Path, *, documents: np.ndarray, split: str, num_samples: int,
    seq_length: int, seed: int, cache_dir: Path, new_token_bias: float = 0.0,
    base_vocab_size: int | None = None,
) -> PackedDataset:
    """A PackedDataset whose indices come from (or go into) the cache under `cache_dir`."""
    lengths = np.asarray(docs.sequence_lengths)
    data_digest = array_digest(lengths)
    weights = None
    if new_token_bias > 0:
        if base_vocab_size is None:
            raise DataError(f"{prefix}: new_token_bias needs the base vocabulary size")
        counts = cached_arrays(
            cache_dir, "new-tokens",
            description={"prefix": str(prefix), "lengths": data_digest, "base_vocab_size": base_vocab_size},
            names=("counts",), build=lambda: {"counts": docs.tokens_at_least(base_vocab_size)},
        )["counts"]
        share = counts[documents] / np.maximum(lengths[documents], 1)
        weights = 1.0 + new_token_bias * share
    description = {
        "class": "PackedDataset", "prefix": str(prefix), "lengths": data_digest, "split": split,
        "documents": array_digest(documents), "num_samples": num_samples, "seq_length": seq_length,
        "seed": seed, "new_token_bias": new_token_bias, "base_vocab_size": base_vocab_size,
    }
    arrays = cached_arrays(
        cache_dir, f"packed-{split}", description=description,
        names=("document_index", "sample_index", "shuffle_index"),
        build=lambda: build_indices(lengths, documents, num_samples=num_samples, seq_length=seq_length, seed=seed,
                                    doc_weights=weights),
    )
    return PackedDataset(docs, lengths, seq_length=seq_length, **arrays)
