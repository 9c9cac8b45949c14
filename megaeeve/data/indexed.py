"""Megatron's MMIDIDX v1 token datasets: a `.bin` of token ids and an `.idx` describing it.

Layout (little endian), byte-identical to megatron-core's IndexedDatasetBuilder:

    PREFIX.idx  b"MMIDIDX\\x00\\x00" | u64 version = 1 | u8 dtype code | u64 N sequences | u64 D
                | int32 sequence_lengths[N] | int64 sequence_pointers[N] (byte offsets into .bin)
                | int64 document_indices[D] (D = documents + 1; 0, then the sequence count after each)
    PREFIX.bin  the sequences' token ids back to back, in the dtype (uint16 or int32 here)

One document is normally one sequence. The writer keeps the index arrays in small numpy buffers that
spill to temporary files, so neither writing nor merging grows in memory with the number of documents;
`.bin` and `.idx` are renamed into place only by `finalize()` (`.idx` last: no `.idx`, no dataset).
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megaeeve.atomic import atomic_file
from megaeeve.errors import IndexedDatasetError, OutputExistsError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8  # 34 bytes
# Megatron's DType codes (megatron.core.datasets.indexed_dataset.DType).
DTYPE_CODES = {
    np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
    np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
WRITABLE_DTYPES = (np.dtype(np.uint16), np.dtype(np.int32))
CHUNK = 1 << 16  # index entries per buffer / per streamed chunk (memory: a few of these, whatever the size)


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id of a `vocab_size` vocabulary fits (ids < 65536), else int32."""
    if vocab_size <= 0 or vocab_size > np.iinfo(np.int32).max:
        raise ValueError(f"vocab_size {vocab_size} is out of range")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def check_output_prefix(prefix: str | os.PathLike) -> None:
    """Refuse a prefix that names a directory ("data/", "."): its files would be the hidden data/.bin, .idx."""
    text = os.fspath(prefix)
    if os.path.basename(text) in ("", ".", ".."):
        raise IndexedDatasetError(
            f"{text}: an output prefix names files (PREFIX.bin, PREFIX.idx), not a directory;"
            f" give a file name in it, e.g. {os.path.join(text, 'name')}"
        )


def exists(prefix: str | os.PathLike) -> bool:
    return os.path.isfile(idx_path(prefix)) and os.path.isfile(bin_path(prefix))


class IndexHeader:
    """The fixed part of an `.idx` file, validated against both files' sizes."""

    def __init__(self, prefix: str | os.PathLike):
        self.idx_path, self.bin_path = idx_path(prefix), bin_path(prefix)
        for path in (self.idx_path, self.bin_path):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"{path}: no such file")
        idx_size = os.path.getsize(self.idx_path)
        with open(self.idx_path, "rb") as f:
            head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise IndexedDatasetError(f"{self.idx_path}: truncated header ({idx_size} bytes < {HEADER_SIZE})")
        if head[: len(MAGIC)] != MAGIC:
            raise IndexedDatasetError(f"{self.idx_path}: not an MMIDIDX index (magic {head[:9]!r})")
        version, code, self.sequence_count, self.document_count = struct.unpack("<QBQQ", head[len(MAGIC):])
        if version != VERSION:
            raise IndexedDatasetError(f"{self.idx_path}: unsupported MMIDIDX version {version} (expected 1)")
        if code not in CODE_DTYPES:
            raise IndexedDatasetError(f"{self.idx_path}: unknown dtype code {code}")
        self.dtype = CODE_DTYPES[code]
        expected = HEADER_SIZE + 12 * self.sequence_count + 8 * self.document_count
        if idx_size != expected:
            what = "truncated" if idx_size < expected else "has trailing bytes (multimodal?)"
            raise IndexedDatasetError(
                f"{self.idx_path}: {what}: {idx_size} bytes, but {self.sequence_count} sequences and "
                f"{self.document_count} document indices need {expected}"
            )
        if self.document_count < 1:
            raise IndexedDatasetError(f"{self.idx_path}: no document indices (needs at least the leading 0)")
        self.bin_size = os.path.getsize(self.bin_path)

    @property
    def lengths_offset(self) -> int:
        return HEADER_SIZE

    @property
    def pointers_offset(self) -> int:
        return HEADER_SIZE + 4 * self.sequence_count

    @property
    def documents_offset(self) -> int:
        return HEADER_SIZE + 12 * self.sequence_count


def _map(path: str) -> tuple[mmap.mmap | None, memoryview | bytes]:
    if os.path.getsize(path) == 0:
        return None, b""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return mm, memoryview(mm)


class IndexedDataset:
    """Read-only, memory-mapped MMIDIDX dataset; item `i` is the i-th sequence's token ids (a view)."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.header = header = IndexHeader(self.prefix)
        self.dtype = header.dtype
        self._idx_mmap, idx_buf = _map(header.idx_path)
        n, d = header.sequence_count, header.document_count
        self.sequence_lengths = np.frombuffer(idx_buf, np.int32, n, header.lengths_offset)
        self.sequence_pointers = np.frombuffer(idx_buf, np.int64, n, header.pointers_offset)
        self.document_indices = np.frombuffer(idx_buf, np.int64, d, header.documents_offset)
        itemsize = self.dtype.itemsize
        end = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * itemsize if n else 0
        if end != header.bin_size:
            raise IndexedDatasetError(
                f"{header.bin_path}: {header.bin_size} bytes, but {header.idx_path} describes {end} "
                f"(truncated, or .bin and .idx of different datasets)"
            )
        if self.document_indices[0] != 0 or self.document_indices[-1] != n:
            raise IndexedDatasetError(
                f"{header.idx_path}: document indices run {self.document_indices[0]}..{self.document_indices[-1]},"
                f" expected 0..{n}"
            )
        self._bin_mmap, bin_buf = _map(header.bin_path)
        self._tokens = np.frombuffer(bin_buf, self.dtype)

    def __getstate__(self) -> str:
        return self.prefix

    def __setstate__(self, prefix: str) -> None:
        self.__init__(prefix)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    def _index(self, idx: int) -> int:
        n = len(self)
        i = int(idx)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.prefix}: sequence {idx} out of range (0..{n - 1})")
        return i

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence `idx` (to its end if `length` is None), O(1)."""
        i = self._index(idx)
        size = int(self.sequence_lengths[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"{self.prefix}: tokens [{offset}, {offset + length}) outside sequence {i} of {size}")
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        return self._tokens[start : start + length]

    def tokens_at_least(self, threshold: int, chunk: int = 1 << 22) -> np.ndarray:
        """Per sequence, how many of its ids are >= `threshold` (new tokens when it is the base vocabulary
        size): one streaming pass over .bin, `chunk` tokens at a time, no per-sequence Python loop.

        Memory: one chunk plus O(sequences). A sequence's count is C(end) - C(start), where C(p) counts
        the hits among tokens [0, p); C is evaluated at every start and end, in file order.
        """
        starts = self.sequence_pointers // self.dtype.itemsize
        points = np.concatenate([starts, starts + self.sequence_lengths])
        order = np.argsort(points, kind="stable")
        at = points[order]
        cumulative = np.empty(len(points), np.int64)
        total = done = 0
        for a in range(0, self.num_tokens, chunk):
            b = min(a + chunk, self.num_tokens)
            hits = np.cumsum(self._tokens[a:b] >= threshold, dtype=np.int32)
            upto = int(np.searchsorted(at, b, side="right"))
            local = at[done:upto] - a  # in [0, b - a]: hits before it in this chunk = hits[local - 1]
            cumulative[done:upto] = total + np.where(local > 0, hits[np.maximum(local - 1, 0)], 0)
            total += int(hits[-1])
            done = upto
        cumulative[done:] = total
        values = np.empty_like(cumulative)
        values[order] = cumulative
        return values[len(starts):] - values[: len(starts)]

    def __getitem__(self, idx: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise ValueError(f"{self.prefix}: slices must be contiguous (step 1), got step {step}")
            return [self.get(i) for i in range(start, stop)]
        return self.get(idx)


class IndexedDatasetWriter:
    """Append documents, then `finalize()` to make PREFIX.bin and PREFIX.idx appear.

    Until `finalize()` everything lives in hidden temporary files beside the prefix; `abort()` (or an
    exception inside a `with` block) removes them. Ids that do not fit `dtype` are refused (megatron-core
    would wrap them silently).
    """

    def __init__(
        self, prefix: str | os.PathLike, dtype: np.dtype | type | None = None, *, vocab_size: int | None = None,
        tmp_dir: str | os.PathLike | None = None,
    ):
        if (dtype is None) == (vocab_size is None):
            raise ValueError("give exactly one of dtype and vocab_size")
        self.dtype = np.dtype(dtype) if dtype is not None else dtype_for_vocab(vocab_size)  # type: ignore[arg-type]
        if self.dtype not in WRITABLE_DTYPES:
            raise ValueError(f"token dtype must be uint16 or int32, got {self.dtype}")
        self._limits = (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max)
        check_output_prefix(prefix)
        self.prefix = os.fspath(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        name = Path(self.prefix).name
        # Temporaries live beside the prefix unless `tmp_dir` (same file system: .bin is renamed from there).
        tmp_dir = tmp_dir if tmp_dir is not None else Path(self.prefix).parent
        self._files: dict[str, tuple[str, object]] = {}
        for part in ("bin", "lengths", "docs"):
            fd, path = tempfile.mkstemp(prefix=f".{name}.{part}.", suffix=".tmp", dir=tmp_dir)
            self._files[part] = (path, os.fdopen(fd, "wb"))
        self._lengths = np.empty(CHUNK, np.int32)
        self._docs = np.empty(CHUNK, np.int64)
        self._n_lengths = self._n_docs = 0
        self.sequence_count = self.document_count = self.token_count = 0
        self._done = False

    # -- appending -------------------------------------------------------------------------------
    def add_document(self, ids: Sequence[int] | np.ndarray, sequence_lengths: Sequence[int] | None = None) -> None:
        """One document; `sequence_lengths` splits it into several sequences (Megatron's sentences)."""
        tokens = np.asarray(ids)
        lengths = np.asarray([tokens.size] if sequence_lengths is None else sequence_lengths, np.int64)
        if lengths.sum() != tokens.size:
            raise ValueError(f"sequence lengths sum to {lengths.sum()}, document has {tokens.size} tokens")
        self._append(tokens, lengths, np.array([len(lengths)], np.int64))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Many one-sequence documents at once: `tokens` back to back, `lengths[i]` tokens each."""
        lengths = np.asarray(lengths, np.int64)
        if lengths.sum() != np.asarray(tokens).size:
            raise ValueError(f"lengths sum to {lengths.sum()}, but {np.asarray(tokens).size} tokens were given")
        self._append(np.asarray(tokens), lengths, np.ones(len(lengths), np.int64))

    def _append(self, tokens: np.ndarray, seq_lengths: np.ndarray, seqs_per_doc: np.ndarray) -> None:
        if self._done:
            raise RuntimeError(f"{self.prefix}: writer already finalized or aborted")
        tokens = tokens.ravel()
        if tokens.size:
            if tokens.dtype.kind not in "iu":
                raise ValueError(f"token ids must be integers, got {tokens.dtype}")
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < self._limits[0] or hi > self._limits[1]:
                bad = lo if lo < self._limits[0] else hi
                raise ValueError(
                    f"{self.prefix}: token id {bad} does not fit {self.dtype} "
                    f"(range {self._limits[0]}..{self._limits[1]}); use int32 or a larger vocab_size"
                )
        if seq_lengths.size and (seq_lengths.min() < 0 or seq_lengths.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{self.prefix}: sequence length out of int32 range")
        self._files["bin"][1].write(tokens.astype(self.dtype, copy=False).tobytes())  # type: ignore[union-attr]
        doc_ends = self.sequence_count + np.cumsum(seqs_per_doc)
        self._buffer("lengths", seq_lengths)
        self._buffer("docs", doc_ends)
        self.sequence_count += len(seq_lengths)
        self.document_count += len(seqs_per_doc)
        self.token_count += tokens.size

    def _buffer(self, part: str, values: np.ndarray) -> None:
        buf = self._lengths if part == "lengths" else self._docs
        used = self._n_lengths if part == "lengths" else self._n_docs
        while values.size:
            take = min(values.size, CHUNK - used)
            buf[used : used + take] = values[:take]
            used += take
            values = values[take:]
            if used == CHUNK:
                self._files[part][1].write(buf.tobytes())  # type: ignore[union-attr]
                used = 0
        if part == "lengths":
            self._n_lengths = used
        else:
            self._n_docs = used

    def add_index(self, prefix: str | os.PathLike) -> None:
        """Append a whole dataset, streaming: memory stays at one chunk however large it is."""
        src = IndexHeader(prefix)
        if src.dtype != self.dtype:
            raise IndexedDatasetError(f"{src.idx_path}: dtype {src.dtype} differs from the output's {self.dtype}")
        base = self.sequence_count
        for values in _read_chunks(src.idx_path, np.int32, src.lengths_offset, src.sequence_count):
            self._buffer("lengths", values)
        first = True
        for values in _read_chunks(src.idx_path, np.int64, src.documents_offset, src.document_count):
            self._buffer("docs", base + (values[1:] if first else values))
            first = False
        with open(src.bin_path, "rb") as f:
            shutil.copyfileobj(f, self._files["bin"][1], 1 << 22)  # type: ignore[arg-type]
        self.sequence_count += src.sequence_count
        self.document_count += src.document_count - 1
        self.token_count += src.bin_size // self.dtype.itemsize

    # -- finishing -------------------------------------------------------------------------------
    def finalize(self) -> None:
        """Write the .idx (streaming from the spill files) and rename .bin, then .idx, into place."""
        if self._done:
            raise RuntimeError(f"{self.prefix}: writer already finalized or aborted")
        for part, used in (("lengths", self._n_lengths), ("docs", self._n_docs)):
            buf = self._lengths if part == "lengths" else self._docs
            self._files[part][1].write(buf[:used].tobytes())  # type: ignore[union-attr]
        for path, f in self._files.values():
            f.flush()  # type: ignore[attr-defined]
            os.fsync(f.fileno())  # type: ignore[attr-defined]
            f.close()  # type: ignore[attr-defined]
        try:
            with atomic_file(idx_path(self.prefix)) as idx:
                idx.write(MAGIC + struct.pack("<QBQQ", VERSION, DTYPE_CODES[self.dtype],
                                              self.sequence_count, self.document_count + 1))
                lengths_file = self._files["lengths"][0]
                for values in _read_chunks(lengths_file, np.int32, 0, self.sequence_count):
                    idx.write(values.tobytes())
                pointer = 0
                for values in _read_chunks(lengths_file, np.int32, 0, self.sequence_count):
                    nbytes = values.astype(np.int64) * self.dtype.itemsize
                    ends = np.cumsum(nbytes) + pointer
                    idx.write((ends - nbytes).tobytes())
                    pointer = int(ends[-1])
                idx.write(np.zeros(1, np.int64).tobytes())
                for values in _read_chunks(self._files["docs"][0], np.int64, 0, self.document_count):
                    idx.write(values.tobytes())
                # Old .idx goes first, new .bin next, new .idx last: never a .bin and .idx that disagree.
                if os.path.exists(idx_path(self.prefix)):
                    os.unlink(idx_path(self.prefix))
                os.replace(self._files["bin"][0], bin_path(self.prefix))
                readable_by_all(bin_path(self.prefix))
                readable_by_all(idx.name)
        finally:
            self._done = True
            self._remove_temporaries()

    def abort(self) -> None:
        """Drop everything written so far."""
        if not self._done:
            self._done = True
            for _, f in self._files.values():
                f.close()  # type: ignore[attr-defined]
            self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        for path, _ in self._files.values():
            if os.path.exists(path):
                os.unlink(path)

    def __del__(self) -> None:  # a writer dropped unfinished leaves no temporaries (kill -9 can; see preprocess)
        if hasattr(self, "_done"):
            self.abort()

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()


def readable_by_all(path: str) -> None:
    """Temporary files are created 0600; a finished dataset gets the usual 0666 & ~umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _read_chunks(path: str, dtype: type, offset: int, count: int) -> Iterable[np.ndarray]:
    """`count` values of `dtype` from byte `offset` of `path`, CHUNK at a time (plain reads, no mmap)."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        f.seek(offset)
        done = 0
        while done < count:
            take = min(CHUNK, count - done)
            values = np.fromfile(f, dtype, take)
            if values.size != take:
                raise IndexedDatasetError(f"{path}: truncated at byte {offset + (done + values.size) * itemsize}")
            yield values
            done += take


def merge_datasets(
    prefixes: Sequence[str | os.PathLike], out_prefix: str | os.PathLike, tmp_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> IndexHeader:
    """Concatenate datasets (same dtype) into `out_prefix`, in order, streaming."""
    if not prefixes:
        raise IndexedDatasetError("merge_datasets needs at least one input prefix")
    if os.path.abspath(out_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise IndexedDatasetError(f"{out_prefix}: the output prefix is also an input")
    existing = [p for p in (f"{out_prefix}.bin", f"{out_prefix}.idx") if os.path.exists(p)]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    # Every input passes the reader's checks before anything is written: a .bin shorter than its .idx
    # says would otherwise be copied into an output that the reader rejects, naming the output.
    headers = [IndexedDataset(p).header for p in prefixes]
    for h in headers[1:]:
        if h.dtype != headers[0].dtype:
            raise IndexedDatasetError(f"{h.idx_path}: dtype {h.dtype} differs from {headers[0].idx_path}'s {headers[0].dtype}")
    with IndexedDatasetWriter(out_prefix, headers[0].dtype, tmp_dir=tmp_dir) as writer:
        for prefix in prefixes:
            writer.add_index(prefix)
    return IndexHeader(out_prefix)
