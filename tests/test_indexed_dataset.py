"""MMIDIDX v1: byte-identical to megatron-core 0.16.1's builder, readable both ways, safe on bad files."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import megaeeve.data.indexed as indexed
from megaeeve.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    dtype_for_vocab,
    merge_datasets,
)
from megaeeve.errors import IndexedDatasetError

REPO = Path(__file__).resolve().parents[1]
# megatron-core warns about missing GPU extras on import and about numpy 2's copy keyword in its builder.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def megatron():
    torch = pytest.importorskip("torch")
    from megatron.core.datasets import indexed_dataset

    return torch, indexed_dataset


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny index buffers, so that writing and merging go through the spill files and chunked reads."""
    monkeypatch.setattr(indexed, "CHUNK", 7)


def random_docs(seed: int, n: int, high: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, high, rng.integers(1, 40)) for _ in range(n)]
    docs[3] = docs[3][:0]  # an empty document is legal in the format
    docs[5] = np.array([0, high - 1])  # both ends of the id range
    return docs


def megatron_write(megatron, prefix: Path, docs, dtype, sentence_splits=None) -> None:
    torch, md = megatron
    builder = md.IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for i, doc in enumerate(docs):
        lengths = (sentence_splits or {}).get(i, [len(doc)])
        builder.add_document(torch.tensor(doc.astype(np.int64)), lengths)
    builder.finalize(f"{prefix}.idx")


def same_bytes(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{s}").read_bytes() == Path(f"{b}{s}").read_bytes() for s in (".bin", ".idx"))


@pytest.mark.parametrize("dtype,high", [(np.uint16, 1 << 16), (np.int32, 200_000)])
def test_byte_identical_to_megatron_and_readable_both_ways(tmp_path, megatron, small_chunks, dtype, high):
    docs = random_docs(0, 60, high)
    splits = {7: [2, len(docs[7]) - 2]}  # one document of two sequences (Megatron's sentence split)
    megatron_write(megatron, tmp_path / "theirs", docs, dtype, splits)

    writer = IndexedDatasetWriter(tmp_path / "ours", dtype)
    for doc in docs[:10]:
        writer.add_document(doc, [2, len(doc) - 2] if len(doc) == len(docs[7]) and doc is docs[7] else None)
    writer.add_documents(np.concatenate(docs[10:]), np.array([len(d) for d in docs[10:]]))
    assert not Path(tmp_path / "ours.idx").exists()  # nothing appears before finalize
    writer.finalize()
    assert same_bytes(tmp_path / "ours", tmp_path / "theirs")

    ours = IndexedDataset(tmp_path / "theirs")  # megaeeve reads megatron's files
    theirs = megatron[1].IndexedDataset(str(tmp_path / "ours"))  # megatron reads ours
    sequences = docs[:7] + [docs[7][:2], docs[7][2:]] + docs[8:]
    assert len(ours) == len(theirs) == len(sequences) and ours.num_documents == len(docs)
    assert ours.dtype == np.dtype(dtype)
    assert ours.sequence_lengths.dtype == np.int32 and ours.sequence_pointers.dtype == np.int64
    assert ours.document_indices.dtype == np.int64
    np.testing.assert_array_equal(ours.document_indices, theirs.document_indices)
    np.testing.assert_array_equal(ours.sequence_lengths, theirs.sequence_lengths)
    for i, seq in enumerate(sequences):
        np.testing.assert_array_equal(ours[i], seq)
        np.testing.assert_array_equal(theirs[i], seq)
    np.testing.assert_array_equal(ours.get(12, offset=1, length=3), theirs.get(12, offset=1, length=3))
    np.testing.assert_array_equal(ours.get(12, offset=2), sequences[12][2:])
    for a, b in zip(ours[10:20], theirs[10:20]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours[-1], sequences[-1])


def test_vocab_size_chooses_dtype_and_out_of_range_ids_are_refused(tmp_path):
    assert dtype_for_vocab(65536) == np.uint16 and dtype_for_vocab(65537) == np.int32
    assert IndexedDatasetWriter(tmp_path / "v", vocab_size=70_000).dtype == np.int32
    for dtype, bad in [(np.uint16, 65536), (np.uint16, -1), (np.int32, 2**31)]:
        writer = IndexedDatasetWriter(tmp_path / "x", dtype)
        writer.add_document([1, 2, 3])
        with pytest.raises(ValueError, match=f"token id {bad} does not fit"):
            writer.add_document(np.array([5, bad], dtype=np.int64))
        writer.abort()
    with pytest.raises(ValueError, match="uint16 or int32"):
        IndexedDatasetWriter(tmp_path / "y", np.int64)
    with IndexedDatasetWriter(tmp_path / "ok", np.uint16) as writer:
        writer.add_document(np.array([0, 65535]))
    np.testing.assert_array_equal(IndexedDataset(tmp_path / "ok")[0], [0, 65535])
    # aborted writers leave nothing behind, not even temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.bin", "ok.idx"]


def test_exception_inside_writer_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
            writer.add_document([1, 2])
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_reader_access_bounds_and_pickle(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.int32) as writer:
        writer.add_document([10, 11, 12])
        writer.add_document([20])
    ds = IndexedDataset(tmp_path / "d")
    assert ds.num_tokens == 4 and len(ds) == 2
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(IndexError):
        ds.get(0, offset=2, length=5)
    with pytest.raises(ValueError, match="contiguous"):
        ds[0:2:2]
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers reopen the files
    np.testing.assert_array_equal(clone[0], [10, 11, 12])


def test_empty_dataset(tmp_path, megatron):
    IndexedDatasetWriter(tmp_path / "e", np.uint16).finalize()
    assert len(IndexedDataset(tmp_path / "e")) == 0
    megatron_write(megatron, tmp_path / "m", [], np.uint16)
    assert same_bytes(tmp_path / "e", tmp_path / "m")


def corrupt(prefix: Path, suffix: str, edit) -> str:
    path = Path(f"{prefix}{suffix}")
    path.write_bytes(edit(path.read_bytes()))
    return str(path)


@pytest.mark.parametrize(
    "suffix,edit,message",
    [
        (".bin", lambda b: b[:-2], "describes"),
        (".bin", lambda b: b + b"\0\0", "describes"),
        (".idx", lambda b: b[:-8], "truncated"),
        (".idx", lambda b: b[:20], "truncated header"),
        (".idx", lambda b: b"XXIDIDX\0\0" + b[9:], "not an MMIDIDX"),
        (".idx", lambda b: b[:9] + (2).to_bytes(8, "little") + b[17:], "version 2"),
        (".idx", lambda b: b[:17] + bytes([9]) + b[18:], "dtype code 9"),
        (".idx", lambda b: b + b"\0" * 3, "trailing bytes"),
    ],
)
def test_truncated_or_corrupt_files_raise_naming_the_file(tmp_path, suffix, edit, message):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
        for doc in random_docs(1, 8, 1000):
            writer.add_document(doc)
    path = corrupt(tmp_path / "d", suffix, edit)
    with pytest.raises(IndexedDatasetError, match=message) as err:
        IndexedDataset(tmp_path / "d")
    assert str(tmp_path / "d") in str(err.value) and (path in str(err.value) or suffix == ".bin")


def test_bin_of_another_dataset_is_detected(tmp_path):
    for name, n in (("a", 7), ("b", 8)):
        with IndexedDatasetWriter(tmp_path / name, np.uint16) as writer:
            for doc in random_docs(n, n, 1000):
                writer.add_document(doc)
    Path(tmp_path / "a.bin").write_bytes(Path(tmp_path / "b.bin").read_bytes())
    with pytest.raises(IndexedDatasetError, match="a.bin"):
        IndexedDataset(tmp_path / "a")
    Path(tmp_path / "b.idx").unlink()
    with pytest.raises(IndexedDatasetError, match="b.idx: no such file"):
        IndexedDataset(tmp_path / "b")


def test_merge_matches_megatron_add_index(tmp_path, megatron, small_chunks):
    torch, md = megatron
    prefixes = []
    for k in range(3):
        prefixes.append(tmp_path / f"in{k}")
        docs = random_docs(k, 9 + k, 50_000)
        megatron_write(megatron, prefixes[-1], docs, np.uint16, {2: [1, len(docs[2]) - 1]} if k == 1 else None)
    builder = md.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for p in prefixes:
        builder.add_index(str(p))
    builder.finalize(str(tmp_path / "theirs.idx"))
    merge_datasets(prefixes, tmp_path / "ours")
    assert same_bytes(tmp_path / "ours", tmp_path / "theirs")

    out = subprocess.run(
        [sys.executable, str(REPO / "tools/merge_datasets.py"), "--input", *map(str, prefixes),
         "--output-prefix", str(tmp_path / "cli")], capture_output=True, text=True, check=True,
    )
    assert "30 documents" in out.stdout and same_bytes(tmp_path / "cli", tmp_path / "theirs")
    # An existing output is replaced only with --overwrite, as in every other tool.
    again = [sys.executable, str(REPO / "tools/merge_datasets.py"), "--input", *map(str, prefixes[:1]),
             "--output-prefix", str(tmp_path / "cli")]
    refused = subprocess.run(again, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr == f"error: {tmp_path / 'cli'}.bin already exists; pass " \
                                                         "--overwrite to replace it\n"
    assert same_bytes(tmp_path / "cli", tmp_path / "theirs")
    subprocess.run([*again, "--overwrite"], capture_output=True, text=True, check=True)
    assert len(IndexedDataset(tmp_path / "cli")) == len(IndexedDataset(prefixes[0]))

    with IndexedDatasetWriter(tmp_path / "wide", np.int32) as writer:
        writer.add_document([1])
    with pytest.raises(IndexedDatasetError, match="dtype"):
        merge_datasets([prefixes[0], tmp_path / "wide"], tmp_path / "bad")
    with pytest.raises(ValueError, match="also an input"):
        merge_datasets([prefixes[0], prefixes[1]], prefixes[1])
    assert not (tmp_path / "bad.idx").exists()


def test_merge_memory_does_not_grow_with_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(indexed, "CHUNK", 4096)
    with IndexedDatasetWriter(tmp_path / "part", np.uint16) as writer:
        writer.add_documents(np.ones(200_000, np.uint16), np.full(50_000, 4))  # 50k documents
    peaks = []
    for copies in (2, 16):
        tracemalloc.start()
        merge_datasets([tmp_path / "part"] * copies, tmp_path / f"merged{copies}")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert len(IndexedDataset(tmp_path / "merged16")) == 16 * 50_000
    # 8x the documents and tokens; the peak stays at a few index chunks (a list-based merge would need 8x)
    assert peaks[1] < 1.3 * peaks[0] + 64 * 1024, peaks


def test_merge_checks_every_input_as_the_reader_does_before_writing(tmp_path):
    """A .bin shorter than its .idx says: the merge names that input and writes nothing (tool: exit 2)."""
    for name in ("good", "cut"):
        with IndexedDatasetWriter(tmp_path / name, np.uint16) as writer:
            for doc in random_docs(2, 9, 1000):
                writer.add_document(doc)
    cut = corrupt(tmp_path / "cut", ".bin", lambda b: b[:-6])
    with pytest.raises(IndexedDatasetError, match=rf"{cut}: .* describes"):
        merge_datasets([tmp_path / "good", tmp_path / "cut"], tmp_path / "merged")
    tool = [sys.executable, str(REPO / "tools/merge_datasets.py"), "--input", str(tmp_path / "good")]
    for inputs, out, named in [
        ([str(tmp_path / "cut")], tmp_path / "cli", f"error: {cut}: "),
        ([], tmp_path / "good.bin" / "out", str(tmp_path / "good.bin")),  # an output under a regular file
    ]:
        proc = subprocess.run([*tool, *inputs, "--output-prefix", str(out)], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and named in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.bin", "cut.idx", "good.bin", "good.idx"]


def test_an_output_prefix_naming_a_directory_is_refused(tmp_path):
    for prefix in (f"{tmp_path}/", f"{tmp_path}/.", f"{tmp_path}/data/"):
        with pytest.raises(IndexedDatasetError, match="names files .* not a directory"):
            IndexedDatasetWriter(prefix, np.uint16)
    assert list(tmp_path.iterdir()) == []
