"""Step 4: how often the target tokenizer emits each id over a counting corpus, streamed.

Memory is fixed: a count per id, a count per target-language character, and a bounded queue of
batches. A reader thread parses the corpus while the tokenizer's own thread pool (all cores, or
RAYON_NUM_THREADS) encodes the previous batch; under `mpiexec -n K` each rank reads its share of the
corpus's byte ranges and the counts are summed across ranks.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from megaeeve.corpus import CorpusError, iter_records, plan_shards
from megaeeve.vocab.scripts import Script

MPI_ENV = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


@dataclass
class Counts:
    token_counts: np.ndarray  # int64, one per id of the tokenizer
    char_counts: dict[str, int]  # target-language characters in the text
    documents: int
    tokens: int
    chars: int
    seconds: float = 0.0


def mpi_world() -> Any | None:
    """MPI.COMM_WORLD when started by mpiexec with more than one rank, else None (no MPI import)."""
    if not any(v in os.environ for v in MPI_ENV):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def _batches(shards: Sequence, batch_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for shard in shards:
        for rec in iter_records(shard):
            if rec.text is None:
                if rec.reason == "blank_line":
                    continue
                raise rec.error()
            batch.append(rec.text)
            size += len(rec.text)
            if size >= batch_chars:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _prefetch(it: Iterator[list[str]], depth: int = 2) -> Iterator[list[str]]:
    """Run `it` in a thread, `depth` batches ahead; its exception is re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # handed to the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def count_corpus(
    tok: Tokenizer,
    files: Sequence[str],
    script: Script,
    batch_chars: int = 1 << 20,
    progress: bool = True,
    desc: str = "counting",
) -> Counts:
    """Emission count of every id of `tok` and count of every script character over `files`."""
    comm = mpi_world()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    shards = plan_shards(list(files), 4 * size)[rank::size]
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    token_counts = np.zeros(vocab_size, dtype=np.int64)
    char_counts: dict[str, int] = {}
    docs = chars = 0
    error = None
    start = time.perf_counter()
    bar = tqdm(desc=desc, unit="doc", disable=not progress or rank != 0, dynamic_ncols=True)
    try:
        for batch in _prefetch(_batches(shards, batch_chars)):
            encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
            if encodings:
                ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])
                token_counts += np.bincount(ids, minlength=vocab_size)
            for cp, n in zip(*script.count_chars(batch)):
                ch = chr(int(cp))
                char_counts[ch] = char_counts.get(ch, 0) + int(n)
            docs += len(batch)
            chars += sum(len(t) for t in batch)
            bar.update(len(batch))
            bar.set_postfix(tokens_per_s=f"{token_counts.sum() / (time.perf_counter() - start):,.0f}")
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
        from mpi4py import MPI

        total = np.empty_like(token_counts)
        comm.Allreduce(token_counts, total, op=MPI.SUM)
        token_counts = total
        merged: dict[str, int] = {}
        for part in comm.allgather(char_counts):
            for ch, n in part.items():
                merged[ch] = merged.get(ch, 0) + n
        char_counts = merged
        docs, chars = comm.allreduce(docs), comm.allreduce(chars)
    return Counts(
        token_counts=token_counts,
        char_counts=dict(sorted(char_counts.items())),
        documents=docs,
        tokens=int(token_counts.sum()),
        chars=chars,
        seconds=time.perf_counter() - start,
    )
