"""The core of the corpus reader: a `Record` (one line or row: a document or why it is not one), a `Shard`
(a part of one input file), the input formats chosen by file name, and the checks every document passes.

The line and table readers (lines.py, tables.py) build on these; read.py turns them into the public iterators.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from megaeeve.corpus.streams import COMPRESSION_SUFFIXES, open_binary, stream_errors
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

BLOCK_BYTES = 1 << 18  # bytes of a line file handled together: one decode, one split, no per-line I/O


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
        line = self.line if self.line is not None else line_number(self.path, self.offset)
        kind = "row" if input_kind(self.path)[0] == "table" else "line"
        return f"{self.path}:{line}" if kind == "line" else f"{self.path} row {line}"

    def error(self) -> CorpusError:
        return CorpusError(f"{self.location()}: {self.reason}{': ' + self.detail if self.detail else ''}")


def input_kind(path: str) -> tuple[str, str]:
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
            input_kind(path)  # fail early on an unsupported format
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
        family, compression = input_kind(path)
        if family == "table" or compression or size <= target:
            shards.append(Shard(path))
            continue
        starts = list(range(0, size, target))
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            shards.append(Shard(path, start, end))
    return shards


def line_number(path: str, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (uncompressed files)."""
    family, compression = input_kind(path)
    count = 0
    with stream_errors(path, compression), open_binary(path, compression) as f:
        remaining = offset
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 24))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count + 1


def blank(text: str) -> bool:
    """Whether a line or a text holds nothing but whitespace: `not text.strip()`, without copying the text."""
    return not text or text.isspace()


def check_text(text: object, max_chars: int) -> str | tuple[str, str]:
    """`text` itself when it is a document, else (reason, detail) saying why not."""
    if not isinstance(text, str):
        return "not_a_string", f"got {type(text).__name__}"
    if blank(text):
        return "empty", ""
    if "\x00" in text:
        return "nul_byte", f"NUL at character {text.index(chr(0))}"
    if len(text) > max_chars:
        return "too_long", f"{len(text)} characters > --max-chars {max_chars}"
    return text


@dataclass
class Block:
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
