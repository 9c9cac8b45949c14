"""Encoding one shard of a preprocessing run into a part dataset, its work overlapped in three threads.

- one thread reads blocks of lines and parses them (holds the GIL; `_prefetched`);
- two encode consecutive batches with `Tokenizer.encode_batch_fast` (Rust threads on `workers` cores, GIL
  released; or tiktoken, see fast_bpe.py; `_encode`);
- the calling thread turns ids into numpy arrays and appends them to the part's writer, in order.

`Counts` says what became of every record (written, skipped by reason, blank), so a run can account for
every input document (preprocess.py sums them into the manifest).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from megaeeve.corpus import SKIP_REASONS, Record, Shard, iter_batches
from megaeeve.data.indexed import IndexedDatasetWriter
from megaeeve.errors import NotEligible, PreprocessError
from megaeeve.progress import Progress

BATCH_BYTES_PER_WORKER = 1 << 17
EXAMPLES_PER_REASON = 3


@dataclass
class Counts:
    """What happened to every record of some input: documents written, skipped by reason, blank lines."""

    documents_read: int = 0
    documents_written: int = 0
    tokens_written: int = 0
    blank_lines: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, rec: Record) -> None:
        self.documents_read += 1
        self.skipped[rec.reason] += 1  # type: ignore[index]
        examples = self.skipped_examples.setdefault(rec.reason, [])  # type: ignore[arg-type]
        if len(examples) < EXAMPLES_PER_REASON:
            # A line number not known yet (a shard starting mid-file) would cost a count from the file's start.
            where = rec.location() if rec.line is not None else f"{rec.path} (line at byte {rec.offset})"
            examples.append(f"{where}: {rec.detail}" if rec.detail else where)

    def add(self, other: "Counts") -> None:
        self.documents_read += other.documents_read
        self.documents_written += other.documents_written
        self.tokens_written += other.tokens_written
        self.blank_lines += other.blank_lines
        for reason, n in other.skipped.items():
            self.skipped[reason] += n
        for reason, examples in other.skipped_examples.items():
            mine = self.skipped_examples.setdefault(reason, [])
            mine.extend(examples[: EXAMPLES_PER_REASON - len(mine)])

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Counts":
        return cls(**obj)


def _eos_from_config(tokenizer_path: Path) -> str | None:
    """The eos token named by a Hugging Face tokenizer directory (tokenizer_config / special tokens map)."""
    directory = tokenizer_path if tokenizer_path.is_dir() else tokenizer_path.parent
    if tokenizer_path.is_file() and tokenizer_path.name != "tokenizer.json":
        return None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if path.is_file():
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and eos:
                return eos
    return None


def resolve_eod(tokenizer_path: str, tok, eod_token: str | None) -> int:
    """Id of the end-of-document token: `eod_token`, else the tokenizer directory's eos token."""
    token = eod_token or _eos_from_config(Path(tokenizer_path))
    if token is None:
        raise PreprocessError(
            f"{tokenizer_path}: --append-eod needs an end-of-document token, and this tokenizer names no "
            f"eos_token (tokenizer_config.json / special_tokens_map.json); pass --eod-token TOKEN"
        )
    eod = tok.token_to_id(token)
    if eod is None:
        raise PreprocessError(f"{tokenizer_path}: EOD token {token!r} is not in the vocabulary")
    return eod


@dataclass(frozen=True)
class ShardEncoding:
    """How every shard of a run is read and encoded: fixed once the tokenizer is loaded."""

    encode: Callable[[list[str]], list]  # texts -> per text a tokenizers.Encoding, or its ids (`plain_ids`)
    plain_ids: bool  # `encode` returns lists of ids (the tiktoken path)
    json_key: str
    max_chars: int
    skip_bad: bool
    batch_bytes: int  # input bytes per encode call
    eod: int | None  # appended to every document when given


@dataclass
class _Encoded:
    encodings: list  # per document in order: a tokenizers.Encoding, or the ids themselves (tiktoken)
    blank_lines: int
    bad: list[Record]


def batch_encoder(tok, workers: int, tiktoken: bool, name: str) -> Callable[[list[str]], list]:
    """texts -> per text a tokenizers.Encoding (its `.ids`) or, with `tiktoken`, the ids list; `name` (the
    tokenizer's path) is for the error when tiktoken cannot encode this tokenizer identically."""
    if tiktoken:
        from megaeeve.data.fast_bpe import tiktoken_batch_encoder

        try:
            return tiktoken_batch_encoder(tok, workers)
        except NotEligible as e:
            raise PreprocessError(f"{name}: {e}; run without --tiktoken") from e
    return lambda texts: tok.encode_batch_fast(texts, add_special_tokens=False)


def _encode(
    batches: Iterator[tuple[list[str], list[Record]]], encode: Callable[[list[str]], list], skip_bad: bool,
    ahead: int = 2,
) -> Iterator[_Encoded]:
    """The batches encoded, in order, `ahead` of them in flight besides the one handed out.

    Two encode calls share the tokenizer's threads (Rust, GIL released), so the next batch fills the cores
    while the last, longest documents of one finish, and while the caller takes the ids of another: one
    call at a time left a core idle at the end of every batch (English, with documents up to 100 KB).
    """

    def one(texts: list[str], records: list[Record]) -> _Encoded:
        bad = [r for r in records if r.reason != "blank_line"]
        if bad and not skip_bad:
            raise bad[0].error()
        return _Encoded(encode(texts) if texts else [], len(records) - len(bad), bad)

    pool = ThreadPoolExecutor(ahead)
    pending: collections.deque[Future] = collections.deque()
    try:
        for texts, records in batches:
            pending.append(pool.submit(one, texts, records))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prefetched(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run the generator `items` in a background thread, `depth` items ahead; its exceptions re-raise here.

    Reading (JSON parsing holds the GIL), encoding (Rust, GIL released) and writing overlap this way.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        thread.join()
        if hasattr(items, "close"):
            items.close()


def _flatten(encodings: list, plain_ids: bool, eod: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(all token ids, per-document lengths) of a batch, the EOD id after each document when given.

    `len(encoding)` costs no list, and each `.ids` list is consumed as soon as it is made (the bare
    `sum(len(e.ids) ...)` does as much): no batch-wide list of lists to build, walk and free.
    """
    lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
    ids = encodings if plain_ids else (e.ids for e in encodings)
    tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
    if eod is None:
        return tokens, lengths
    return np.insert(tokens, np.cumsum(lengths), eod), lengths + 1


def encode_shard(shard: Shard, writer: IndexedDatasetWriter, how: ShardEncoding, progress: Progress) -> Counts:
    """Tokenize the records of one shard into `writer`; returns what happened to each record."""
    counts = Counts()
    batches = iter_batches(shard, how.json_key, how.max_chars, how.batch_bytes)
    for enc in _encode(_prefetched(batches), how.encode, how.skip_bad):
        counts.blank_lines += enc.blank_lines
        for rec in enc.bad:
            counts.skip(rec)
        if not enc.encodings:
            continue
        tokens, lengths = _flatten(enc.encodings, how.plain_ids, how.eod)
        enc = None  # free the Encoding objects now, not after the next batch arrives
        total = len(tokens)
        try:
            writer.add_documents(tokens, lengths)
        except ValueError as e:
            raise PreprocessError(f"{shard.path}: {e}") from e
        counts.documents_read += len(lengths)
        counts.documents_written += len(lengths)
        counts.tokens_written += total
        progress.update(len(lengths), total)
    return counts
