"""Tokenize text corpora into one Megatron MMIDIDX dataset, offline, on every core and across MPI ranks.

How the work is cut:
- the inputs are planned into shards (`corpus.plan_shards`, about `shard_bytes` each, at least one per
  rank); rank r takes shards r, r + K, ... of K ranks;
- within a shard the work overlaps: reading, encoding and writing run in three threads (encode.py);
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

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megaeeve.atomic import write_json
from megaeeve.corpus import DEFAULT_MAX_CHARS, Shard, expand_inputs, plan_shards
from megaeeve.data.encode import BATCH_BYTES_PER_WORKER, Counts, ShardEncoding, batch_encoder, encode_shard, resolve_eod
from megaeeve.data.indexed import (
    IndexedDataset, IndexedDatasetWriter, bin_path, check_output_prefix, dtype_for_vocab, exists,
    idx_path, merge_datasets, readable_by_all,
)
from megaeeve.errors import CorpusError, IndexedDatasetError, PreprocessError
from megaeeve.log import STDERR, logger
from megaeeve.mpi import launched_by_mpi, mpi_world
from megaeeve.progress import Progress
from megaeeve.tokenizer_io import load_tokenizer, tokenizer_fingerprint

log = logger(__name__)

MANIFEST_FORMAT = "megaeeve-preprocess/1"


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
class _Comm:
    """This process's place among MPI ranks (a single process when not launched by mpiexec/srun)."""

    rank: int = 0
    size: int = 1
    local_size: int = 1
    mpi: Any = None

    @classmethod
    def detect(cls) -> "_Comm":
        world = mpi_world()
        if world is None:
            if not launched_by_mpi() and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
                raise PreprocessError(
                    "started as one of several SLURM tasks without MPI: every task would write the same output; "
                    "launch with `srun --mpi=pmix ...` / `mpirun`, or as a single task"
                )
            return cls()
        from mpi4py import MPI

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
    encoding = ShardEncoding(
        encode=batch_encoder(tok, workers, cfg.tiktoken, cfg.tokenizer), plain_ids=cfg.tiktoken,
        json_key=cfg.json_key, max_chars=cfg.max_chars, skip_bad=cfg.skip_bad,
        # Enough text per batch to keep every worker thread busy, small enough that the few batches in flight
        # (texts, then tokenizers' Encoding objects, ~100 bytes a token) stay a fixed, modest amount of memory.
        batch_bytes=cfg.batch_bytes or BATCH_BYTES_PER_WORKER * workers, eod=eod,
    )
    run = _Run(cfg=cfg, files=files, shards=shards, work=work, comm=comm, workers=workers, encoding=encoding,
               dtype=dtype, vocab_size=vocab_size, fingerprint=fingerprint, started=started,
               setup_seconds=time.perf_counter() - started)

    error = None
    hashes: dict[str, str] = {}
    try:
        _encode_my_shards(run)
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
        return _assemble(run, hashes)
    except PreprocessError as e:
        raise _failed(str(e), work) from e


@dataclass(frozen=True)
class _Run:
    """One run as planned before any document is read: what each rank encodes and rank 0 assembles."""

    cfg: PreprocessConfig
    files: list[str]  # the inputs, expanded
    shards: list[Shard]  # in input order; shard i becomes part i of the work directory
    work: Path  # the work directory of the parts
    comm: _Comm
    workers: int  # tokenizer threads per rank
    encoding: ShardEncoding
    dtype: np.dtype  # of the token ids
    vocab_size: int
    fingerprint: str  # of the tokenizer
    started: float  # time.perf_counter() at the start
    setup_seconds: float  # loading the tokenizer, planning: before the first document


def _encode_my_shards(run: _Run) -> None:
    comm, work = run.comm, run.work
    mine = [i for i in range(len(run.shards)) if i % comm.size == comm.rank]
    todo = [i for i in mine if not (Path(_part(work, i) + ".json").is_file() and exists(_part(work, i)))]
    if len(todo) < len(mine):
        log.info(f"rank {comm.rank}: resuming, {len(mine) - len(todo)} of {len(mine)} shards already done in {work}",
                 extra=STDERR)
    desc = f"tokenizing ({run.workers} threads" + (f", rank 0 of {comm.size})" if comm.size > 1 else ")")
    progress = Progress(desc, len(todo), enabled=run.cfg.progress and comm.rank == 0)
    try:
        for i in todo:
            with IndexedDatasetWriter(_part(work, i), run.dtype) as writer:
                counts = encode_shard(run.shards[i], writer, run.encoding, progress)
            write_json(_part(work, i) + ".json", asdict(counts))
            progress.part_done()
    finally:
        progress.close()


def _assemble(run: _Run, hashes: dict[str, str]) -> dict[str, Any]:
    """Rank 0: merge the parts in order and write the manifest (last: it marks the dataset complete)."""
    cfg, files, work = run.cfg, run.files, run.work
    per_file = {f: Counts() for f in files}
    for i, shard in enumerate(run.shards):
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
    merge_datasets([_part(work, i) for i in range(len(run.shards))], cfg.output_prefix, tmp_dir=work, overwrite=True)
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
        "dtype": run.dtype.name,
        "tokenizer": {"path": cfg.tokenizer, "sha256": run.fingerprint, "vocab_size": run.vocab_size,
                      "encoder": "tiktoken" if cfg.tiktoken else "tokenizers"},
        "json_key": cfg.json_key,
        "append_eod": cfg.append_eod,
        "eod_id": run.encoding.eod,
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
        "ranks": run.comm.size,
        "workers_per_rank": run.workers,
        "seconds": round(time.perf_counter() - run.started, 3),
        "setup_seconds": round(run.setup_seconds, 3),
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
