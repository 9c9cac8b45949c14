"""Tokenize text corpora into one Megatron MMIDIDX dataset, offline, on every core and across MPI ranks.

How the work is cut:
- the inputs are planned into shards (`corpus.plan_shards`, about `shard_bytes` each, at least one per
  rank); rank r takes shards r, r + K, ... of K ranks;
- within a shard the work overlaps: one thread reads blocks of lines and parses them (holds the GIL), two
  encode consecutive batches with `Tokenizer.encode_batch_fast` (Rust threads on `workers` cores, GIL
  released; or tiktoken, see fast_bpe.py), and the main thread turns ids into numpy arrays and appends them
  to the part's writer, in order;
- each finished shard is a complete part dataset (+ its counts) in a work directory beside the prefix,
  `.NAME.parts/`; after a crash, kill -9 or error, a rerun with the same inputs and options keeps the
  finished parts and redoes only the rest (a resume, so it needs no `overwrite`);
- rank 0 concatenates the parts in shard order (= input order, so any rank count gives the same bytes),
  then writes PREFIX.bin, PREFIX.idx and, last, PREFIX.manifest.json, and removes the work directory.

Nothing is dropped silently: a bad record stops the run with its file:line, or with `skip_bad` is
counted by reason in the manifest (documents read = written + skipped). A damaged compressed file, or
an input with no document at all, stops the run whatever `skip_bad` says.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import os
import queue
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from megaeeve.atomic import write_json
from megaeeve.corpus import (
    DEFAULT_MAX_CHARS, SKIP_REASONS, Record, Shard, expand_inputs, iter_batches, plan_shards,
)
from megaeeve.data.indexed import (
    IndexedDataset, IndexedDatasetWriter, bin_path, check_output_prefix, dtype_for_vocab, exists,
    idx_path, merge_datasets, readable_by_all,
)
from megaeeve.errors import CorpusError, IndexedDatasetError, NotEligible, PreprocessError
from megaeeve.tokenizer_io import load_tokenizer, tokenizer_fingerprint

MANIFEST_FORMAT = "megaeeve-preprocess/1"
BATCH_BYTES_PER_WORKER = 1 << 17
EXAMPLES_PER_REASON = 3
MPI_ENV_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


@dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer: str
    json_key: str = "text"
    append_eod: bool = False
    eod_token: str | None = None
    workers: int | None = None  # tokenizer threads per rank; default: this rank's share of the cores
    skip_bad: bool = False
    max_chars: int = DEFAULT_MAX_CHARS
    batch_bytes: int | None = None  # input bytes per encode call; default BATCH_BYTES_PER_WORKER per worker thread
    shard_bytes: int = 64 << 20
    progress: bool = True
    tiktoken: bool = False  # exact tiktoken path for GPT-2-style byte-level BPE (fast_bpe.py); refused otherwise
    overwrite: bool = False  # replace an existing dataset at output_prefix


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


# -- the tokenizer side ------------------------------------------------------------------------------
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


# -- one shard -----------------------------------------------------------------------------------------
@dataclass
class _Encoded:
    encodings: list  # per document in order: a tokenizers.Encoding, or the ids themselves (tiktoken)
    blank_lines: int
    bad: list[Record]


def batch_encoder(tok, cfg: PreprocessConfig, workers: int) -> Callable[[list[str]], list]:
    """texts -> per text a tokenizers.Encoding (its `.ids`) or, on the tiktoken path, the ids list."""
    if cfg.tiktoken:
        from megaeeve.data.fast_bpe import tiktoken_batch_encoder

        try:
            return tiktoken_batch_encoder(tok, workers)
        except NotEligible as e:
            raise PreprocessError(f"{cfg.tokenizer}: {e}; run without --tiktoken") from e
    return lambda texts: tok.encode_batch_fast(texts, add_special_tokens=False)


def _encode(
    batches: Iterator[tuple[list[str], list[Record]]], encode: Callable[[list[str]], list], cfg: PreprocessConfig,
    ahead: int = 2,
) -> Iterator[_Encoded]:
    """The batches encoded, in order, `ahead` of them in flight besides the one handed out.

    Two encode calls share the tokenizer's threads (Rust, GIL released), so the next batch fills the cores
    while the last, longest documents of one finish, and while the caller takes the ids of another: one
    call at a time left a core idle at the end of every batch (English, with documents up to 100 KB).
    """

    def one(texts: list[str], records: list[Record]) -> _Encoded:
        bad = [r for r in records if r.reason != "blank_line"]
        if bad and not cfg.skip_bad:
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


def encode_shard(
    shard: Shard, encode: Callable[[list[str]], list], cfg: PreprocessConfig, eod: int | None,
    writer: IndexedDatasetWriter, workers: int, bar=None,
) -> Counts:
    """Tokenize the records of one shard into `writer`; returns what happened to each record."""
    counts = Counts()
    # Enough text per batch to keep every worker thread busy, small enough that the few batches in flight
    # (texts, then tokenizers' Encoding objects, ~100 bytes a token) stay a fixed, modest amount of memory.
    batches = iter_batches(shard, cfg.json_key, cfg.max_chars, cfg.batch_bytes or BATCH_BYTES_PER_WORKER * workers)
    for enc in _encode(_prefetched(batches), encode, cfg):
        counts.blank_lines += enc.blank_lines
        for rec in enc.bad:
            counts.skip(rec)
        if not enc.encodings:
            continue
        tokens, lengths = _flatten(enc.encodings, cfg.tiktoken, eod)
        enc = None  # free the Encoding objects now, not after the next batch arrives
        total = len(tokens)
        try:
            writer.add_documents(tokens, lengths)
        except ValueError as e:
            raise PreprocessError(f"{shard.path}: {e}") from e
        counts.documents_read += len(lengths)
        counts.documents_written += len(lengths)
        counts.tokens_written += total
        if bar is not None:
            bar.update(len(lengths))
            bar.tokens += total
            bar.set_postfix_str(f"{bar.tokens / max(bar.format_dict['elapsed'], 1e-9):,.0f} tokens/s", refresh=False)
    return counts


# -- the run -------------------------------------------------------------------------------------------
@dataclass
class _Comm:
    """This process's place among MPI ranks (a single process when not launched by mpiexec/srun)."""

    rank: int = 0
    size: int = 1
    local_size: int = 1
    mpi: Any = None

    @classmethod
    def detect(cls) -> "_Comm":
        if not any(v in os.environ for v in MPI_ENV_VARS):
            if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
                raise PreprocessError(
                    "started as one of several SLURM tasks without MPI: every task would write the same output; "
                    "launch with `srun --mpi=pmix ...` / `mpirun`, or as a single task"
                )
            return cls()
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        local = world.Split_type(MPI.COMM_TYPE_SHARED)
        return cls(world.Get_rank(), world.Get_size(), local.Get_size(), world)

    def allgather(self, obj: Any) -> list[Any]:
        return self.mpi.allgather(obj) if self.mpi is not None else [obj]

    def bcast(self, obj: Any) -> Any:
        return self.mpi.bcast(obj, root=0) if self.mpi is not None else obj


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # small fixed buffer


def _work_dir(prefix: str) -> Path:
    p = Path(prefix)
    return p.parent / f".{p.name}.parts"


def _part(work: Path, i: int) -> str:
    return str(work / f"part-{i:06d}")


def _check_output(prefix: str, overwrite: bool) -> Path:
    """The work directory, once the prefix names files and replaces no dataset unless asked to.

    A work directory with a plan and no manifest is a run to resume: its .bin/.idx, if any, come from a
    crash while assembling, so they are no dataset to protect.
    """
    try:
        check_output_prefix(prefix)
    except IndexedDatasetError as e:
        raise PreprocessError(str(e)) from e
    work = _work_dir(prefix)
    manifest = f"{prefix}.manifest.json"
    resuming = (work / "plan.json").is_file() and not os.path.exists(manifest)
    existing = [f for f in (bin_path(prefix), idx_path(prefix), manifest) if os.path.exists(f)]
    if existing and not overwrite and not resuming:
        raise PreprocessError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace the dataset")
    return work


def _prepare_work_dir(work: Path, plan: dict[str, Any]) -> str | None:
    """Keep finished parts only when they were made for exactly this plan; else start clean.

    Returns the error when the directory cannot be written (the caller shares it with every rank).
    """
    plan_file = work / "plan.json"
    if plan_file.is_file():
        try:
            if json.loads(plan_file.read_text()) == plan:
                return None
        except json.JSONDecodeError:
            pass
    try:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        write_json(plan_file, plan)
    except OSError as e:
        return f"{work.parent}: cannot write the output there ({e})"
    return None


def _failed(error: str, work: Path) -> PreprocessError:
    """The run's error, saying what became of the work directory: kept to resume from, or removed if empty."""
    finished = len(list(work.glob("part-*.json")))
    if not finished:
        shutil.rmtree(work, ignore_errors=True)
        return PreprocessError(error)
    return PreprocessError(
        f"{error} [{work}/ keeps {finished} finished shard(s): rerunning the same command resumes from them while"
        f" the inputs and options are unchanged; delete it to start over]"
    )


def _default_workers(comm: _Comm) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // comm.local_size)


def preprocess(cfg: PreprocessConfig) -> dict[str, Any] | None:
    """Run the whole pipeline; returns the manifest on rank 0 (None on other ranks)."""
    started = time.perf_counter()
    work = _check_output(cfg.output_prefix, cfg.overwrite)
    comm = _Comm.detect()
    workers = cfg.workers or _default_workers(comm)
    # The tokenizers Rust pool reads this when it first starts; whether it runs at all is up to the caller's
    # TOKENIZERS_PARALLELISM (tools/preprocess_data.py turns it on; the test suite keeps it off).
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    try:
        files = expand_inputs(cfg.inputs)
        tok = load_tokenizer(cfg.tokenizer)
    except (CorpusError, ValueError) as e:
        raise PreprocessError(str(e)) from e
    eod = resolve_eod(cfg.tokenizer, tok, cfg.eod_token) if cfg.append_eod else None
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = dtype_for_vocab(vocab_size)
    fingerprint = tokenizer_fingerprint(tok)
    total_bytes = sum(os.path.getsize(f) for f in files)
    shards = plan_shards(files, max(comm.size, -(-total_bytes // cfg.shard_bytes)))
    plan = {
        "inputs": [[f, os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files],
        "shards": [[s.path, s.start, s.end] for s in shards],
        "tokenizer": fingerprint,
        "options": [cfg.json_key, eod, cfg.max_chars, cfg.skip_bad, dtype.name, comm.size],
    }
    error = _prepare_work_dir(work, plan) if comm.rank == 0 else None
    error = comm.bcast(error)  # the work directory is ready, or every rank stops
    if error:
        raise PreprocessError(error)
    encode = batch_encoder(tok, cfg, workers)
    setup_seconds = time.perf_counter() - started

    error = None
    hashes: dict[str, str] = {}
    try:
        _encode_my_shards(shards, comm, cfg, encode, eod, dtype, work, workers)
        hashes = {f: _sha256(f) for f in files[comm.rank :: comm.size]}
    except (CorpusError, PreprocessError) as e:
        error = str(e)
    except Exception as e:  # every rank must reach the allgather, or the others wait forever
        if comm.size == 1:
            raise
        error = f"rank {comm.rank}: {type(e).__name__}: {e}"

    results = comm.allgather((error, hashes))
    errors = [e for e, _ in results if e]
    if errors:
        raise _failed(errors[0], work) if comm.rank == 0 else PreprocessError(errors[0])
    if comm.rank != 0:
        return None
    for _, h in results:
        hashes.update(h)
    try:
        return _assemble(cfg, files, shards, hashes, work, plan, eod, dtype, vocab_size, comm, workers,
                         (started, setup_seconds))
    except PreprocessError as e:
        raise _failed(str(e), work) from e


def _encode_my_shards(shards: list[Shard], comm: _Comm, cfg: PreprocessConfig, encode, eod, dtype, work: Path, workers: int) -> None:
    mine = [i for i in range(len(shards)) if i % comm.size == comm.rank]
    todo = [i for i in mine if not (Path(_part(work, i) + ".json").is_file() and exists(_part(work, i)))]
    if len(todo) < len(mine):
        print(f"rank {comm.rank}: resuming, {len(mine) - len(todo)} of {len(mine)} shards already done in {work}",
              file=sys.stderr, flush=True)
    bar = None
    if cfg.progress and comm.rank == 0:
        from tqdm import tqdm

        desc = f"tokenizing ({workers} threads" + (f", rank 0 of {comm.size})" if comm.size > 1 else ")")
        bar = tqdm(desc=desc, unit=" docs", unit_scale=True, smoothing=0.1)
        bar.tokens = 0
    try:
        for i in todo:
            with IndexedDatasetWriter(_part(work, i), dtype) as writer:
                counts = encode_shard(shards[i], encode, cfg, eod, writer, workers, bar)
            write_json(_part(work, i) + ".json", asdict(counts))
    finally:
        if bar is not None:
            bar.close()


def _assemble(cfg, files, shards, hashes, work: Path, plan, eod, dtype, vocab_size, comm, workers, timing) -> dict[str, Any]:
    """Rank 0: merge the parts in order and write the manifest (last: it marks the dataset complete)."""
    per_file = {f: Counts() for f in files}
    for i, shard in enumerate(shards):
        per_file[shard.path].add(Counts.from_json(json.loads(Path(_part(work, i) + ".json").read_text())))
    _refuse_empty(per_file)
    total = Counts()
    for counts in per_file.values():
        total.add(counts)
    if not total.documents_written:
        raise PreprocessError(
            f"{', '.join(files)}: no document written: all {total.documents_read} were bad (skipped by --skip-bad)"
        )
    manifest_path = Path(f"{cfg.output_prefix}.manifest.json")
    if manifest_path.exists():
        manifest_path.unlink()
    # An existing output was refused above unless --overwrite.
    merge_datasets([_part(work, i) for i in range(len(shards))], cfg.output_prefix, tmp_dir=work, overwrite=True)
    out = IndexedDataset(cfg.output_prefix)
    skipped = sum(total.skipped.values())
    if (out.num_documents, out.num_tokens) != (total.documents_written, total.tokens_written) or (
        total.documents_read != total.documents_written + skipped
    ):
        raise PreprocessError(f"{cfg.output_prefix}: internal accounting mismatch; the parts in {work} disagree")
    manifest = {
        "format": MANIFEST_FORMAT,
        "output_prefix": cfg.output_prefix,
        "files": {"bin": bin_path(cfg.output_prefix), "idx": idx_path(cfg.output_prefix)},
        "dtype": dtype.name,
        "tokenizer": {"path": cfg.tokenizer, "sha256": plan["tokenizer"], "vocab_size": vocab_size,
                      "encoder": "tiktoken" if cfg.tiktoken else "tokenizers"},
        "json_key": cfg.json_key,
        "append_eod": cfg.append_eod,
        "eod_id": eod,
        "max_chars": cfg.max_chars,
        "skip_bad": cfg.skip_bad,
        "documents": {
            "read": total.documents_read,
            "written": total.documents_written,
            "skipped": skipped,
            "skipped_by_reason": total.skipped,
            "skipped_examples": total.skipped_examples,
        },
        "blank_lines": total.blank_lines,
        "tokens_written": total.tokens_written,
        "inputs": [
            {"path": f, "bytes": os.path.getsize(f), "sha256": hashes[f], **_file_counts(per_file[f])} for f in files
        ],
        "ranks": comm.size,
        "workers_per_rank": workers,
        "seconds": round(time.perf_counter() - timing[0], 3),
        "setup_seconds": round(timing[1], 3),  # loading the tokenizer, planning: before the first document
    }
    write_json(manifest_path, manifest)
    readable_by_all(str(manifest_path))
    shutil.rmtree(work)
    return manifest


def _refuse_empty(per_file: dict[str, Counts]) -> None:
    """An input without a single record is a mistake (an empty download, a wrong file), not a no-op."""
    for path, counts in per_file.items():
        if not counts.documents_read:
            what = "only blank lines" if counts.blank_lines else "no records"
            raise PreprocessError(f"{path}: no documents ({what}); remove it from --input if that is intended")


def _file_counts(c: Counts) -> dict[str, Any]:
    return {
        "documents_read": c.documents_read,
        "documents_written": c.documents_written,
        "skipped_by_reason": {r: n for r, n in c.skipped.items() if n},
        "blank_lines": c.blank_lines,
        "tokens_written": c.tokens_written,
    }
