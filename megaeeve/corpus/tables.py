"""Table formats: Parquet and Arrow files, read in record batches of the text column, never whole in memory."""

from __future__ import annotations

import functools
from typing import Iterator

from megaeeve.corpus.core import Block, Record, check_text
from megaeeve.errors import CorpusError

TABLE_BATCH_ROWS = 1024


def _table_batches(path: str, key: str) -> Iterator["pyarrow.RecordBatch"]:
    """Record batches of the `key` column, never the whole table in memory.

    Parquet is read row group by row group through pyarrow (the engine of `datasets`); Arrow files
    are memory-mapped: the IPC stream format `datasets` writes through `datasets.Dataset.from_file`,
    the IPC file format (Feather v2) through pyarrow. (Reading parquet through a `datasets` streaming
    iterator aborted the interpreter at exit: "terminate called without an active exception".)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.lower().endswith(".parquet"):
        try:
            source = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise CorpusError(f"{path}: not a readable parquet file ({e})") from e
        columns = source.schema_arrow.names
        _require_column(path, key, columns)
        yield from source.iter_batches(batch_size=TABLE_BATCH_ROWS, columns=[key])
        return
    with open(path, "rb") as f:
        file_format = f.read(6) == b"ARROW1"
    try:
        if file_format:
            import pyarrow.ipc

            reader = pyarrow.ipc.open_file(pa.memory_map(path))
            _require_column(path, key, reader.schema.names)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i).select([key])
                for start in range(0, batch.num_rows, TABLE_BATCH_ROWS):
                    yield batch.slice(start, TABLE_BATCH_ROWS)
            return
        import datasets

        table = datasets.Dataset.from_file(path).data.table
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{path}: not a readable Arrow file ({e})") from e
    _require_column(path, key, table.column_names)
    yield from table.select([key]).to_batches(max_chunksize=TABLE_BATCH_ROWS)


def _require_column(path: str, key: str, columns: list[str]) -> None:
    if key not in columns:
        raise CorpusError(f"{path}: no column {key!r} (columns: {', '.join(columns)})")


def table_blocks(path: str, key: str, max_chars: int, block_bytes: int) -> Iterator[Block]:
    """Rows in blocks of about `block_bytes` characters of text (or one row, if longer)."""
    row, items, bad, chars = 0, [], 0, 0
    for batch in _table_batches(path, key):
        for value in batch.column(0).to_pylist():
            item = check_text(value, max_chars)
            if isinstance(item, tuple):
                item = Record(path, row + len(items), None, item[0], item[1], row + len(items) + 1)
                bad += 1
            else:
                chars += len(item)
            items.append(item)
            if chars >= block_bytes:
                yield Block(path, items, bad, functools.partial(list, range(row, row + len(items))), row + 1)
                row, items, bad, chars = row + len(items), [], 0, 0
    if items:
        yield Block(path, items, bad, functools.partial(list, range(row, row + len(items))), row + 1)
