"""Line formats: JSONL (one JSON object per line, the text under a key) and plain text (one document per line),
read a block of whole lines at a time (one decode, one split, no per-line I/O).

A shard of an uncompressed line file is a byte range: it owns the lines that start inside it, so workers and MPI
ranks read disjoint parts of one large file.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from typing import Iterator

from megaeeve.corpus.core import Block, Record, Shard, blank, check_text, input_kind
from megaeeve.corpus.streams import open_binary, stream_errors
from megaeeve.errors import CorpusError


def _line_blocks(shard: Shard, block_bytes: int) -> Iterator[tuple[int, int | None, bytes]]:
    """(byte offset, line number if known, whole lines with their newlines) for the lines owned by `shard`,
    about `block_bytes` at a time (a block always ends at a line end, or at the end of the file)."""
    _, compression = input_kind(shard.path)
    with stream_errors(shard.path, compression), open_binary(shard.path, compression) as f:
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
    if blank(line):
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
    return check_text(obj[key], max_chars)


def _text_item(line: str, key: str, max_chars: int) -> str | tuple[str, str]:
    """The document of one line of a .txt file, or (reason, detail); a blank line is no document."""
    return ("blank_line", "") if blank(line) else check_text(line, max_chars)


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


def _line_block(path: str, family: str, pos: int, line_no: int | None, data: bytes, key: str,
                max_chars: int) -> Block:  # fmt: skip
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
    return Block(path, items, bad, offsets, line_no)


def _line_offsets(pos: int, data: bytes) -> list[int]:
    """Byte offset of every line of a block starting at `pos`."""
    return list(itertools.accumulate((len(raw) + 1 for raw in data.split(b"\n")), initial=pos))


def line_file_blocks(shard: Shard, key: str, max_chars: int, block_bytes: int) -> Iterator[Block]:
    """The lines owned by `shard` (of a JSONL or text file), in order, in blocks of about `block_bytes`: per line
    its document or a `Record` saying why not."""
    family, _ = input_kind(shard.path)
    for pos, line_no, data in _line_blocks(shard, block_bytes):
        yield _line_block(shard.path, family, pos, line_no, data, key, max_chars)
