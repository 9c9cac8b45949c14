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
"""

from __future__ import annotations

import contextlib
import functools
import glob
import gzip
import io
import itertools
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from megaeeve.errors import CorpusError

# Reasons a record is not a document. Order is stable: manifests list them in this order.
SKIP_REASONS = (
    "invalid_json",
    "missing_key",
    "not_a_string",
    "invalid_utf8",
    "empty",
    "nul_byte",
    "too_long",
)

DEFAULT_MAX_CHARS = 10_000_000

LINE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".txt")
TABLE_SUFFIXES = (".parquet", ".arrow")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
COMPRESSION_NAMES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
ZSTD_READ_SIZE = 1 << 17  # compressed bytes per decompress call (zstd's recommended input size)


@dataclass(frozen=True)
class Shard:
    """A part of one input file: bytes [start, end) of an uncompressed line file, or the whole file."""

    path: str
    start: int = 0
    end: int | None = None  # None: to the end of the file


@dataclass(frozen=True)
class Record:
    """One line or row of an input: a document (`text`) or why it is not one (`reason`)."""

    path: str
    offset: int  # byte offset of the line (line files) or row number (tables); for `location`
    text: str | None
    reason: str | None = None  # one of SKIP_REASONS, or "blank_line" for text files
    detail: str = ""
    line: int | None = None  # 1-based line/row number when known without counting

    def location(self) -> str:
        """`file:line` for error messages; counts newlines before `offset` when the line is unknown."""
        line = self.line if self.line is not None else _line_number(self.path, self.offset)
        kind = "row" if _kind(self.path)[0] == "table" else "line"
        return f"{self.path}:{line}" if kind == "line" else f"{self.path} row {line}"

    def error(self) -> CorpusError:
        return CorpusError(f"{self.location()}: {self.reason}{': ' + self.detail if self.detail else ''}")


def _kind(path: str) -> tuple[str, str]:
    """(family, compression) of a path: family is 'jsonl', 'txt' or 'table'."""
    name = path.lower()
    compression = ""
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            compression, name = suffix, name[: -len(suffix)]
            break
    if name.endswith(TABLE_SUFFIXES):
        if compression:
            raise CorpusError(f"{path}: compressed {Path(name).suffix} files are not supported")
        return "table", ""
    if name.endswith(".txt"):
        return "txt", compression
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", compression
    raise CorpusError(
        f"{path}: unknown corpus format; expected one of {LINE_SUFFIXES + TABLE_SUFFIXES}"
        f" (optionally {', '.join(COMPRESSION_SUFFIXES)} for line files)"
    )


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Expand files, directories and globs into a sorted, de-duplicated file list.

    A pattern that matches nothing is an error: a typo must not silently shrink the corpus.
    """
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matched = sorted(
                str(p) for p in Path(pattern).rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        else:
            matched = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else (
                [pattern] if os.path.isfile(pattern) else []
            )
        if not matched:
            raise CorpusError(f"{pattern}: no such file, or the pattern matches no file")
        for path in matched:
            _kind(path)  # fail early on an unsupported format
        files.extend(matched)
    seen: set[str] = set()
    return [f for f in files if not (f in seen or seen.add(f))]


def plan_shards(paths: Sequence[str], num_shards: int) -> list[Shard]:
    """Split inputs into about `num_shards` parts of similar byte size, in input order.

    Uncompressed line files are cut at byte boundaries (a line belongs to the shard its first byte is in);
    compressed files and tables stay whole. Concatenating the shards' records in order gives the inputs'
    records in order.
    """
    sizes = [os.path.getsize(p) for p in paths]
    target = max(1, -(-sum(sizes) // max(1, num_shards)))
    shards: list[Shard] = []
    for path, size in zip(paths, sizes):
        family, compression = _kind(path)
        if family == "table" or compression or size <= target:
            shards.append(Shard(path))
            continue
        starts = list(range(0, size, target))
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            shards.append(Shard(path, start, end))
    return shards


class _ZstdFile(io.RawIOBase):
    """A .zst file decoded frame after frame; raises EOFError, as gzip does, when the file ends inside a frame.

    zstandard's stream_reader stops quietly at such a cut and returns what it decoded: a partial download
    read as a complete, shorter corpus.
    """

    def __init__(self, path: str):
        import zstandard

        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False  # the input read so far ends inside a frame
        self._out = memoryview(b"")  # decoded, not yet returned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._file.read(ZSTD_READ_SIZE)
            if not data:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            self._out = memoryview(self._decompress(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        """Decode `data`, starting a new frame after each one that ends in it."""
        out = []
        while data:
            out.append(self._frame.decompress(data))
            self._in_frame = not self._frame.eof
            if self._in_frame:
                break
            data = self._frame.unused_data
            self._frame = self._dctx.decompressobj()
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_binary(path: str, compression: str) -> io.BufferedIOBase:
    if compression == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression in (".zst", ".zstd"):
        return io.BufferedReader(_ZstdFile(path))
    return open(path, "rb")


@contextlib.contextmanager
def _stream_errors(path: str, compression: str) -> Iterator[None]:
    """Turn a damaged compressed stream into one `CorpusError` naming the file.

    Reading on past the damage is impossible, so --skip-bad cannot apply: the rest of the file would be
    dropped without a trace and the manifest's counts would be wrong.
    """
    if not compression:
        yield
        return
    import zstandard

    name = COMPRESSION_NAMES[compression]
    cannot_skip = "--skip-bad cannot help: the damage is in the compressed stream, not in a record"
    try:
        yield
    except EOFError as e:
        raise CorpusError(
            f"{path}: truncated {name} stream (the file ends inside compressed data: an interrupted download or"
            f" copy?); {cannot_skip}"
        ) from e
    except (gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as e:
        raise CorpusError(f"{path}: corrupt {name} stream ({e}); {cannot_skip}") from e


def _line_number(path: str, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (uncompressed files)."""
    family, compression = _kind(path)
    count = 0
    with _stream_errors(path, compression), _open_binary(path, compression) as f:
        remaining = offset
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 24))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count + 1


BLOCK_BYTES = 1 << 18  # bytes of a line file handled together: one decode, one split, no per-line I/O


def _line_blocks(shard: Shard, block_bytes: int) -> Iterator[tuple[int, int | None, bytes]]:
    """(byte offset, line number if known, whole lines with their newlines) for the lines owned by `shard`,
    about `block_bytes` at a time (a block always ends at a line end, or at the end of the file)."""
    _, compression = _kind(shard.path)
    with _stream_errors(shard.path, compression), _open_binary(shard.path, compression) as f:
        pos = 0
        line_no: int | None = 1
        if shard.start > 0:
            f.seek(shard.start - 1)
            # The line that straddles `start` belongs to the previous shard unless it starts exactly here.
            if f.read(1) != b"\n":
                f.readline()
            pos = f.tell()
            line_no = None
        while shard.end is None or pos < shard.end:
            data = f.read(block_bytes if shard.end is None else min(block_bytes, shard.end - pos))
            if not data:
                break
            if not data.endswith(b"\n"):
                data += f.readline()  # the last line starts inside the shard: it is ours, whole
            yield pos, line_no, data
            pos += len(data)
            if line_no is not None:
                line_no += data.count(b"\n")


def _blank(text: str) -> bool:
    return not text or text.isspace()  # like `not text.strip()`, without copying the text


def _check_text(text: object, max_chars: int) -> str | tuple[str, str]:
    """`text` itself when it is a document, else (reason, detail) saying why not."""
    if not isinstance(text, str):
        return "not_a_string", f"got {type(text).__name__}"
    if _blank(text):
        return "empty", ""
    if "\x00" in text:
        return "nul_byte", f"NUL at character {text.index(chr(0))}"
    if len(text) > max_chars:
        return "too_long", f"{len(text)} characters > --max-chars {max_chars}"
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON escape makes one: UTF-8 cannot encode them


def _lone_surrogate(line: str, text: object) -> str | None:
    """Why `text` (parsed from the JSON `line`) is not valid Unicode text, or None.

    json.loads turns an unpaired escape such as "\\ud800" into a lone surrogate, which no UTF-8 encoder (nor
    the tokenizer) accepts: the same damage as an invalid UTF-8 byte, so it gets the same reason. The
    substring test keeps the search off lines without such an escape.
    """
    if not isinstance(text, str) or ("\\ud" not in line and "\\uD" not in line):
        return None
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return f"lone surrogate \\u{ord(found.group()):04x} (an unpaired JSON escape) at character {found.start()}"


_scan_json = json.JSONDecoder().scan_once  # the C scanner behind json.loads, without its per-call overhead


def _parse_json(line: str) -> object:
    """`json.loads(line)`, about twice as fast on the usual line: one value, no surrounding whitespace."""
    try:
        obj, end = _scan_json(line, 0)
        if end == len(line):
            return obj
    except (StopIteration, json.JSONDecodeError):
        pass
    return json.loads(line)  # whitespace around the value, or the exact error for a bad line


def _json_item(line: str, key: str, max_chars: int) -> str | tuple[str, str]:
    """The document of one JSONL line, or (reason, detail).

    The usual line, one object whose text passes every check, is accepted here in a few C calls; any other
    goes through `_json_record`, which finds the reason.
    """
    try:
        obj, end = _scan_json(line, 0)
    except (StopIteration, json.JSONDecodeError):
        return _json_record(line, key, max_chars)
    text = obj.get(key) if end == len(line) and type(obj) is dict else None
    if (type(text) is str and text and not text.isspace() and "\x00" not in text and len(text) <= max_chars
            and "\\ud" not in line and "\\uD" not in line):  # fmt: skip
        return text
    return _json_record(line, key, max_chars)


def _json_record(line: str, key: str, max_chars: int) -> str | tuple[str, str]:
    """`_json_item` for any line: the document, or (reason, detail)."""
    if _blank(line):
        return "empty", "blank line"
    try:
        obj = _parse_json(line)
    except json.JSONDecodeError as e:
        return "invalid_json", str(e)
    if not isinstance(obj, dict) or key not in obj:
        return "missing_key", f"no key {key!r}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"
    surrogate = _lone_surrogate(line, obj[key])
    if surrogate:
        return "invalid_utf8", surrogate
    return _check_text(obj[key], max_chars)


def _text_item(line: str, key: str, max_chars: int) -> str | tuple[str, str]:
    """The document of one line of a .txt file, or (reason, detail); a blank line is no document."""
    return ("blank_line", "") if _blank(line) else _check_text(line, max_chars)


def _decode_lines(data: bytes) -> list[str | tuple[str, str]]:
    """The lines of a block as text (newline and the CRs before it removed), or ("invalid_utf8", detail)."""
    ends_line = data.endswith(b"\n")
    try:
        lines: list = data.decode("utf-8").split("\n")  # UTF-8 never holds a 0x0A byte inside a character
    except UnicodeDecodeError:
        lines = data.split(b"\n")
    if ends_line:
        lines.pop()
    if b"\r" in data:
        last = len(lines) if ends_line else len(lines) - 1  # a last line without newline keeps its CRs
        lines[:last] = [line.rstrip("\r" if isinstance(line, str) else b"\r") for line in lines[:last]]
    if lines and isinstance(lines[0], bytes):
        for i, raw in enumerate(lines):
            try:
                lines[i] = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                lines[i] = ("invalid_utf8", f"byte {e.start} of the line: {e.reason}")
    return lines


@dataclass
class _Block:
    """Consecutive lines (or rows) of one input: per line its document or a `Record` saying why not."""

    path: str
    items: list[str | Record]
    bad: int  # how many items are Records
    offsets: Callable[[], list[int]]  # byte offset (line files) or row number (tables) of every item
    first_line: int | None  # line / row number of the first item, when known

    def records(self) -> Iterator[Record]:
        """Every item as a `Record` (documents too), with its place."""
        offsets = self.offsets()
        for i, item in enumerate(self.items):
            line = None if self.first_line is None else self.first_line + i
            yield item if isinstance(item, Record) else Record(self.path, offsets[i], item, None, "", line)


def _line_block(path: str, family: str, pos: int, line_no: int | None, data: bytes, key: str,
                max_chars: int) -> _Block:  # fmt: skip
    item = _json_item if family == "jsonl" else _text_item
    items: list = [line if isinstance(line, tuple) else item(line, key, max_chars) for line in _decode_lines(data)]
    offsets = functools.cache(lambda: _line_offsets(pos, data))
    bad = 0
    for i, it in enumerate(items):
        if isinstance(it, tuple):
            starts, line = offsets(), None if line_no is None else line_no + i
            items[i] = Record(path, starts[i], None, it[0], it[1], line)
            bad += 1
    last = items[-1] if items else None
    if isinstance(last, Record) and last.reason == "invalid_json" and not data.endswith(b"\n"):
        # A block ends at a line end or at the end of the file: this is the file's last line, without its
        # newline and not JSON: the file was cut inside a record (a partial copy, a full disk, a .zst cut
        # between frames). Skipping it would drop the rest of the file without a trace.
        raise CorpusError(f"{last.location()}: invalid_json in the file's last line, which has no newline: the "
                          f"file looks cut short (an interrupted download or copy?); --skip-bad cannot help")
    return _Block(path, items, bad, offsets, line_no)


def _line_offsets(pos: int, data: bytes) -> list[int]:
    """Byte offset of every line of a block starting at `pos`."""
    return list(itertools.accumulate((len(raw) + 1 for raw in data.split(b"\n")), initial=pos))


def _iter_blocks(shard: Shard, key: str, max_chars: int, block_bytes: int = BLOCK_BYTES) -> Iterator[_Block]:
    """The lines or rows of `shard` in order, in blocks."""
    family, _ = _kind(shard.path)
    if family == "table":
        yield from _table_blocks(shard.path, key, max_chars, block_bytes)
        return
    for pos, line_no, data in _line_blocks(shard, block_bytes):
        yield _line_block(shard.path, family, pos, line_no, data, key, max_chars)


def iter_records(
    shard: Shard | str, key: str = "text", max_chars: int = DEFAULT_MAX_CHARS
) -> Iterator[Record]:
    """Yield every line/row of `shard` as a `Record`, in file order."""
    shard = Shard(shard) if isinstance(shard, str) else shard
    for block in _iter_blocks(shard, key, max_chars):
        yield from block.records()


def iter_texts(shard: Shard | str, key: str = "text", max_chars: int = DEFAULT_MAX_CHARS) -> Iterator[str | Record]:
    """Like `iter_records`, but a document is its plain text (no `Record` built: the fast path)."""
    shard = Shard(shard) if isinstance(shard, str) else shard
    for block in _iter_blocks(shard, key, max_chars):
        yield from block.items


def iter_batches(
    shard: Shard | str, key: str = "text", max_chars: int = DEFAULT_MAX_CHARS, batch_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[list[str], list[Record]]]:
    """(documents, Records of the other lines) of `shard`, about `batch_bytes` of input at a time: the
    fastest way through a corpus, no per-line work beyond parsing and checking."""
    shard = Shard(shard) if isinstance(shard, str) else shard
    for block in _iter_blocks(shard, key, max_chars, batch_bytes):
        if not block.bad:
            yield block.items, []  # type: ignore[misc]
        else:
            yield ([i for i in block.items if isinstance(i, str)], [i for i in block.items if isinstance(i, Record)])


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


def _table_blocks(path: str, key: str, max_chars: int, block_bytes: int) -> Iterator[_Block]:
    """Rows in blocks of about `block_bytes` characters of text (or one row, if longer)."""
    row, items, bad, chars = 0, [], 0, 0
    for batch in _table_batches(path, key):
        for value in batch.column(0).to_pylist():
            item = _check_text(value, max_chars)
            if isinstance(item, tuple):
                item = Record(path, row + len(items), None, item[0], item[1], row + len(items) + 1)
                bad += 1
            else:
                chars += len(item)
            items.append(item)
            if chars >= block_bytes:
                yield _Block(path, items, bad, functools.partial(list, range(row, row + len(items))), row + 1)
                row, items, bad, chars = row + len(items), [], 0, 0
    if items:
        yield _Block(path, items, bad, functools.partial(list, range(row, row + len(items))), row + 1)


SAMPLE_PARTS = 64


def sample_documents(paths: Sequence[str], sample_bytes: int, parts: int = SAMPLE_PARTS) -> Iterator[str]:
    """About `sample_bytes` of UTF-8 text from `paths`, the same every time: the leading documents of each of
    `parts` byte ranges spread evenly over the inputs (`plan_shards`; a compressed file or a table is one
    range), so the sample covers the whole corpus, not its first files. A range shorter than its share leaves
    the rest to the ranges after it. Inputs no larger on disk than `sample_bytes` are read whole. A bad
    record raises `CorpusError`, as in `iter_documents`.
    """
    if sum(os.path.getsize(p) for p in paths) <= sample_bytes:
        yield from iter_documents(paths)
        return
    shards = plan_shards(paths, parts)
    left = sample_bytes
    for i, shard in enumerate(shards):
        budget, taken = left // (len(shards) - i), 0
        for item in iter_texts(shard):
            if isinstance(item, str):
                yield item
                taken += len(item.encode("utf-8"))
                if taken >= budget:
                    break
            elif item.reason != "blank_line":
                raise item.error()
        left -= taken


def iter_documents(
    paths: Sequence[str], key: str = "text", max_chars: int = DEFAULT_MAX_CHARS, skip_bad: bool = False
) -> Iterator[str]:
    """Texts of all documents in `paths`; a bad record raises `CorpusError` unless `skip_bad`."""
    for path in paths:
        for item in iter_texts(path, key, max_chars):
            if isinstance(item, str):
                yield item
            elif item.reason != "blank_line" and not skip_bad:
                raise item.error()
