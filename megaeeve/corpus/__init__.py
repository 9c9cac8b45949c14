"""Read text corpora as a stream of documents, each with the place it came from.

Formats, chosen by file name:
- JSONL: ``*.jsonl``, ``*.json``, ``*.ndjson``, optionally ``.gz`` or ``.zst``: one JSON object per line,
  the text under a key (default ``text``).
- Plain text: ``*.txt`` (optionally ``.gz``/``.zst``): one document per line; blank lines separate
  nothing and are counted as ``blank_line``, never treated as documents.
- Parquet / Arrow: ``*.parquet``, ``*.arrow``: read in record batches (pyarrow / `datasets`), the text in a column.

Every line or row becomes one `Record`: either a document or the reason it is not one. The reader never
drops anything; callers raise `CorpusError` on a bad record or, when asked to, skip and count it.
Uncompressed line files can be split into byte ranges (`plan_shards`) so that workers and MPI ranks read
disjoint parts of one large file; each range owns the lines that start inside it.

A damaged compressed file (one that ends inside compressed data, as a partial download does, or whose data
does not decode) raises `CorpusError` naming the file: the damage is below the records, so no record can
be skipped over it. One cut stays invisible to any reader: a multi-frame .zst (or multi-member .gz) cut
exactly between two frames is a valid, shorter stream.

The modules, lowest first:
- `streams`: compressed streams (.gz, .zst) and their damage.
- `core`: `Record`, `Shard`, the formats by file name, input lists and shard plans, the document checks.
- `lines`: the line formats (JSONL, text), a block of whole lines at a time.
- `tables`: the table formats (Parquet, Arrow), in record batches.
- `read`: the public iterators over any format, and a fixed sample of a corpus.
"""

from megaeeve.corpus.core import (
    BLOCK_BYTES, DEFAULT_MAX_CHARS, LINE_SUFFIXES, SKIP_REASONS, TABLE_SUFFIXES, Record, Shard, expand_inputs,
    plan_shards,
)
from megaeeve.corpus.read import SAMPLE_PARTS, iter_batches, iter_documents, iter_records, iter_texts, sample_documents
from megaeeve.corpus.streams import COMPRESSION_NAMES, COMPRESSION_SUFFIXES, ZSTD_READ_SIZE
from megaeeve.corpus.tables import TABLE_BATCH_ROWS

__all__ = [
    "BLOCK_BYTES", "COMPRESSION_NAMES", "COMPRESSION_SUFFIXES", "DEFAULT_MAX_CHARS", "LINE_SUFFIXES", "SAMPLE_PARTS",
    "SKIP_REASONS", "TABLE_BATCH_ROWS", "TABLE_SUFFIXES", "ZSTD_READ_SIZE", "Record", "Shard", "expand_inputs",
    "iter_batches", "iter_documents", "iter_records", "iter_texts", "plan_shards", "sample_documents",
]
