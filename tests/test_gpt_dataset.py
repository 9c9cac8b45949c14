"""Packed samples, blending, index cache, sampler and the new-token bias, on datasets written by megatron-core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaeeve.data.blending import blend_indices, blended_dataset, samples_per_dataset
from megaeeve.data.gpt_dataset import build_indices, document_split, packed_dataset
from megaeeve.data.indexed import IndexedDataset
from megaeeve.data.sampler import micro_batch_indices
from megaeeve.errors import DataError


def _megatron_dataset(prefix, docs):
    """Write with megatron-core's builder and read with its reader: an independent implementation of the format."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for d in docs:
        builder.add_document(torch.tensor(d, dtype=torch.int64), [len(d)])
    builder.finalize(f"{prefix}.idx")
    return IndexedDataset(str(prefix))


@pytest.fixture(scope="module")
def docs():
    rng = np.random.RandomState(0)
    lengths = [0, *rng.randint(1, 40, size=60)]  # an empty document too
    return [list(rng.randint(0, 1000, size=n)) for n in lengths]


@pytest.fixture(scope="module")
def dataset(module_tmp, docs):
    return _megatron_dataset(module_tmp("ds") / "d", docs)


def test_samples_are_the_shuffled_document_stream(dataset, docs, tmp_path):
    train, _ = document_split(len(docs), 0.1, "d")
    ds = packed_dataset(dataset, "d", documents=train, split="train", num_samples=50, seq_length=16, seed=3,
                        cache_dir=tmp_path)
    stream = np.concatenate([docs[d] for d in ds.document_index])
    assert set(ds.document_index[: len(train)]) == set(train)  # the first epoch holds each train document once
    for i in range(len(ds)):
        j = int(ds.shuffle_index[i])
        assert ds[i].tolist() == stream[j * 16: j * 16 + 17].tolist()
    assert sorted(ds.shuffle_index.tolist()) == list(range(50))


def test_indices_are_a_pure_function_of_their_inputs(dataset, docs):
    lengths = np.asarray(dataset.sequence_lengths)
    docs_ids = np.arange(len(docs))
    a = build_indices(lengths, docs_ids, num_samples=40, seq_length=8, seed=1)
    b = build_indices(lengths, docs_ids, num_samples=40, seq_length=8, seed=1)
    c = build_indices(lengths, docs_ids, num_samples=40, seq_length=8, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["shuffle_index"], c["shuffle_index"])


def test_index_cache_is_reused_and_keyed_by_inputs(dataset, docs, tmp_path):
    ids = np.arange(len(docs))
    first = packed_dataset(dataset, "d", documents=ids, split="train", num_samples=30, seq_length=8, seed=5,
                           cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    again = packed_dataset(dataset, "d", documents=ids, split="train", num_samples=30, seq_length=8, seed=5,
                           cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert isinstance(again.shuffle_index, np.memmap)
    assert [again[i].tolist() for i in range(30)] == [first[i].tolist() for i in range(30)]
    packed_dataset(dataset, "d", documents=ids, split="train", num_samples=30, seq_length=8, seed=6, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 * len(files)


def test_split_holds_out_documents_from_all_over_the_prefix():
    """Two corpora concatenated into one prefix: the held-out documents come from both, by a fixed hash."""
    train, valid = document_split(1000, 0.1, "p")
    assert len(valid) == 100 and len(train) == 900
    assert sorted(train.tolist() + valid.tolist()) == list(range(1000))
    assert valid.tolist() == sorted(valid.tolist()) and train.tolist() == sorted(train.tolist())
    assert 30 <= int((valid < 500).sum()) <= 70  # about half from each corpus, not the tail of the second
    again_train, again_valid = document_split(1000, 0.1, "p")
    assert np.array_equal(valid, again_valid) and np.array_equal(train, again_train)
    train, valid = document_split(10, 0.2, "p")
    assert len(valid) == 2 and len(train) == 8


def test_split_needs_documents_on_both_sides():
    with pytest.raises(DataError, match="p: 1 document"):
        document_split(1, 0.1, "p")


def test_blend_follows_the_weights_at_every_prefix():
    weights = [0.7, 0.2, 0.1]
    out = blend_indices(weights, 1000)
    index, local = out["dataset_index"], out["dataset_sample_index"]
    for n in (10, 100, 1000):
        counts = np.bincount(index[:n], minlength=3)
        assert np.all(np.abs(counts - np.array(weights) * n) <= 1.0), (n, counts)
    for k in range(3):
        assert local[index == k].tolist() == list(range(int((index == k).sum())))
        assert (index == k).sum() <= samples_per_dataset(weights, 1000)[k]


def test_blended_dataset_reads_each_source(dataset, docs, tmp_path):
    ids = np.arange(len(docs))
    parts = [packed_dataset(dataset, "d", documents=ids, split="train", num_samples=n, seq_length=8, seed=k,
                            cache_dir=tmp_path)
             for k, n in enumerate(samples_per_dataset([3, 1], 20))]
    blend = blended_dataset(parts, [3, 1], size=20, cache_dir=tmp_path, description={"test": 1})
    seen = [blend[i][0] for i in range(20)]
    assert seen.count(0) == 15 and seen.count(1) == 5
    k, tokens = blend[3]
    assert tokens.tolist() == parts[k][int(blend.dataset_sample_index[3])].tolist()


def test_sampler_resumes_at_the_exact_sample():
    micro, world = 2, 3
    consumed, seen = 0, []
    for _ in range(4):
        seen.append([list(micro_batch_indices(consumed, micro, r, world)) for r in range(world)])
        consumed += micro * world
    flat = [i for step in seen for rank in step for i in rank]
    assert flat == list(range(24))
    assert [list(micro_batch_indices(12, micro, r, world)) for r in range(world)] == seen[2]


def test_new_token_bias_raises_the_share_of_new_tokens(tmp_path):
    rng = np.random.RandomState(1)
    base = 500
    docs = [list(rng.randint(0, base, size=30)) for _ in range(40)]
    docs += [list(rng.randint(0, base, size=20)) + list(rng.randint(base, base + 50, size=10)) for _ in range(10)]
    _megatron_dataset(tmp_path / "bias", docs)
    ds = IndexedDataset(str(tmp_path / "bias"))
    ids = np.arange(len(docs))

    def share(bias: float) -> float:
        packed = packed_dataset(ds, "bias", documents=ids, split="train", num_samples=200, seq_length=16, seed=0,
                                cache_dir=tmp_path,
                                new_token_bias=bias, base_vocab_size=base)
        tokens = np.concatenate([packed[i] for i in range(len(packed))])
        return float((tokens >= base).mean())

    plain, biased = share(0.0), share(20.0)
    assert plain == pytest.approx(100 / (40 * 30 + 10 * 30), abs=0.03)
    assert biased > 2 * plain
    with pytest.raises(DataError, match="base vocabulary"):
        packed_dataset(ds, "bias", documents=ids, split="train", num_samples=10, seq_length=16, seed=0,
                       cache_dir=tmp_path, new_token_bias=1.0)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 22])
def test_new_token_counts_in_one_vectorised_pass_equal_counting_each_document(tmp_path, chunk):
    """Counted over the .bin in chunks (any chunk size, documents straddling chunk edges, empty documents)
    against a plain count per document through megatron-core's reader."""
    rng = np.random.RandomState(2)
    docs = [list(rng.randint(0, 600, size=rng.randint(0, 40))) for _ in range(60)]
    reference = _megatron_dataset(tmp_path / "n", docs)
    counts = IndexedDataset(str(tmp_path / "n")).tokens_at_least(500, chunk=chunk)
    assert counts.tolist() == [int((reference[i] >= 500).sum()) for i in range(len(docs))]


def test_index_cache_build_may_outlast_the_collective_timeout(tmp_path):
    """Rank 0 builds for 5 s under a 2 s collective timeout: rank 1 waits for the published file, not in a
    collective, and both read the same arrays."""
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("_index_cache_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), str(tmp_path / "store"), str(tmp_path / "cache"),
                               str(tmp_path / "out")], stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert [(tmp_path / f"out.rank{r}").read_text() for r in range(2)] == [str(list(range(10)))] * 2
