"""Reading a corpus: every line or row of a shard, in file order, as documents and `Record`s, whatever its
format; and a fixed sample spread over the whole corpus."""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from megaeeve.corpus.core import BLOCK_BYTES, DEFAULT_MAX_CHARS, Block, Record, Shard, input_kind, plan_shards
from megaeeve.corpus.lines import line_file_blocks
from megaeeve.corpus.tables import table_blocks


def _iter_blocks(shard: Shard, key: str, max_chars: int, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """The lines or rows of `shard` in order, in blocks."""
    family, _ = input_kind(shard.path)
    if family == "table":
        yield from table_blocks(shard.path, key, max_chars, block_bytes)
        return
    yield from line_file_blocks(shard, key, max_chars, block_bytes)


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
