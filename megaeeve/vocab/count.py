"""Step 4: how often the target tokenizer emits each id over a counting corpus, streamed.

Memory is fixed: per process a count per id, a count per target-language character and one batch of
text. The corpus is cut into byte ranges (`plan_shards`); `workers` processes each read, encode (one
thread each) and count whole shards, so reading and JSON parsing scale with the cores as well as the
BPE does. Under `mpiexec -n K` each rank takes every K-th shard and the counts are summed across ranks.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

from megaeeve.corpus import Shard, iter_batches, plan_shards
from megaeeve.errors import CorpusError
from megaeeve.mpi import mpi_world
from megaeeve.progress import Progress
from megaeeve.vocab.scripts import Script

SHARDS_PER_WORKER = 8  # small shards: balanced workers, a progress bar that moves


@dataclass
class Counts:
    token_counts: np.ndarray  # int64, one per id of the tokenizer
    char_counts: dict[str, int]  # target-language characters in the text
    documents: int
    tokens: int
    chars: int
    seconds: float = 0.0


def _batches(shard: Shard, batch_bytes: int) -> Iterator[list[str]]:
    for texts, records in iter_batches(shard, batch_bytes=batch_bytes):
        for rec in records:
            if rec.reason != "blank_line":
                raise rec.error()
        if texts:
            yield texts


def _count_shard(tok: Tokenizer, script: Script, shard: Shard, batch_bytes: int) -> Counts:
    token_counts = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    char_counts: dict[str, int] = {}
    docs = chars = 0
    for batch in _batches(shard, batch_bytes):
        encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])
        token_counts += np.bincount(ids, minlength=len(token_counts))
        for cp, n in zip(*script.count_chars(batch)):
            char_counts[chr(cp)] = char_counts.get(chr(cp), 0) + int(n)
        docs += len(batch)
        chars += sum(len(t) for t in batch)
    return Counts(token_counts, char_counts, docs, int(token_counts.sum()), chars)


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, script: Script, batch_bytes: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes use the cores
    _WORKER.update(tok=Tokenizer.from_str(tokenizer_json), script=script, batch_bytes=batch_bytes)


def _worker_count(shard: Shard) -> Counts:
    return _count_shard(_WORKER["tok"], _WORKER["script"], shard, _WORKER["batch_bytes"])


def _add(total: Counts, part: Counts) -> None:
    total.token_counts += part.token_counts
    for ch, n in part.char_counts.items():
        total.char_counts[ch] = total.char_counts.get(ch, 0) + n
    total.documents += part.documents
    total.tokens += part.tokens
    total.chars += part.chars


def count_corpus(
    tok: Tokenizer,
    files: Sequence[str],
    *,
    script: Script,
    workers: int = 1,
    batch_bytes: int = 1 << 18,
    progress: bool = True,
    desc: str = "counting",
) -> Counts:
    """Emission count of every id of `tok` and count of every script character over `files`."""
    comm = mpi_world()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    shards = plan_shards(list(files), SHARDS_PER_WORKER * max(1, workers) * size)[rank::size]
    total = Counts(np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64), {}, 0, 0, 0)
    start = time.perf_counter()
    error = None
    bar = Progress(desc, len(shards), enabled=progress and rank == 0)
    try:
        with contextlib.ExitStack() as stack:
            if workers > 1 and len(shards) > 1:
                # spawn: the tokenizers library's thread pool does not survive fork
                ctx = multiprocessing.get_context("spawn")
                pool = stack.enter_context(
                    ctx.Pool(min(workers, len(shards)), _init_worker, (tok.to_str(), script, batch_bytes)))
                parts = pool.imap_unordered(_worker_count, shards)
            else:
                parts = (_count_shard(tok, script, shard, batch_bytes) for shard in shards)
            for part in parts:
                _add(total, part)
                bar.update(part.documents, part.tokens)
                bar.part_done()
    except CorpusError as e:
        if comm is None:
            raise
        error = str(e)
    finally:
        bar.close()
    if comm is not None:
        errors = [e for e in comm.allgather(error) if e]
        if errors:
            raise CorpusError(errors[0])
        parts = comm.allgather(total)
        total = Counts(np.zeros_like(total.token_counts), {}, 0, 0, 0)
        for part in parts:
            _add(total, part)
    total.char_counts = dict(sorted(total.char_counts.items()))
    total.seconds = time.perf_counter() - start
    return total
