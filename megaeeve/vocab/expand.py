"""The whole expansion: base tokenizer + target corpus -> expanded tokenizer directory with a report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from tokenizers import Tokenizer

from megaeeve.assets import english_documents
from megaeeve.atomic import atomic_dir, write_json
from megaeeve.corpus import expand_inputs, iter_documents, sample_documents
from megaeeve.errors import CorpusError, ExpansionError, OutputExistsError, TokenizerLoadError
from megaeeve.log import logger
from megaeeve.mpi import mpi_world
from megaeeve.tokenizer_io import load_tokenizer, tokenizer_fingerprint
from megaeeve.vocab.count import Counts
from megaeeve.vocab.family import Family, detect_family
from megaeeve.vocab.intermediate import target_candidates, train_intermediate
from megaeeve.vocab.merge import NewPiece
from megaeeve.vocab.refine import Refined, Threshold, refine
from megaeeve.vocab.scripts import parse_script

log = logger(__name__)

REPORT = "expansion_report.json"


@dataclass
class ExpandConfig:
    base_tokenizer: str  # HF tokenizer directory or tokenizer.json
    corpus: list[str]  # target-language corpus for the intermediate tokenizer
    output: str
    intermediate_vocab_size: int = 40_000
    # Text the intermediate tokenizer trains on: its trainer holds a count of every distinct word in memory,
    # so a 100 GB corpus is sampled (corpus.sample_documents); counting (steps 4-7) reads all of it, streamed.
    intermediate_sample_bytes: int = 256_000_000
    min_frequency: int | None = 6_000
    min_frequency_per_million: float | None = None  # replaces min_frequency when set
    count_corpus: list[str] | None = None  # defaults to `corpus`
    script: str = "hangul"
    held_out: list[str] = field(default_factory=list)  # target-language text for characters per token
    english: list[str] = field(default_factory=list)  # non-target text (default: CPython's pydoc topics)
    workers: int = 1  # counting processes
    overwrite: bool = False
    progress: bool = True


def load_base(path: str) -> tuple[Any, Tokenizer]:
    """(transformers tokenizer, its tokenizers backend) of a directory or tokenizer.json, offline."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    try:
        if p.is_dir():
            hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        else:
            hf = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(p))
    except TokenizerLoadError:
        raise
    except Exception as e:
        raise TokenizerLoadError(f"{path}: cannot load a tokenizer ({e})") from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerLoadError(f"{path}: tokenizer has no fast (tokenizers) backend")
    return hf, backend


@dataclass
class _Tally:
    documents: int = 0
    chars: int = 0


def _documents(
    files: Sequence[str], what: str, docs: Iterable[str] | None = None, tally: _Tally | None = None
) -> Iterator[str]:
    """Documents of `files` (or `docs` read from them), counted into `tally`; an error if there are none (an
    empty corpus is a mistake, not a no-op)."""
    tally = tally or _Tally()
    for doc in iter_documents(files) if docs is None else docs:
        tally.documents += 1
        tally.chars += len(doc)
        yield doc
    if tally.documents == 0:
        raise CorpusError(f"{what} {', '.join(files)} has no documents")


def chars_per_token(base: Tokenizer, target: Tokenizer, docs: list[str]) -> dict[str, Any]:
    """Characters per token of both tokenizers on `docs`, and whether their ids are identical."""
    a = base.encode_batch_fast(docs, add_special_tokens=False)
    b = target.encode_batch_fast(docs, add_special_tokens=False)
    chars = sum(len(d) for d in docs)
    ta, tb = sum(len(e.ids) for e in a), sum(len(e.ids) for e in b)
    return {
        "documents": len(docs),
        "chars": chars,
        "base_tokens": ta,
        "expanded_tokens": tb,
        "base_chars_per_token": round(chars / ta, 4) if ta else None,
        "expanded_chars_per_token": round(chars / tb, 4) if tb else None,
        "identical_ids": all(x.ids == y.ids for x, y in zip(a, b)),
    }


def _token_entry(n: NewPiece, counts: Counts, family: Family) -> dict[str, Any]:
    """A new token in the report: its count; a bridge also names the selected tokens it serves, a single
    character also gives its character count (step 6 keeps it on that)."""
    entry: dict[str, Any] = {
        "id": n.id, "token": n.piece, "text": n.text, "kind": n.kind, "frequency": int(counts.token_counts[n.id])
    }
    if n.text is not None and len(n.text) == 1:
        entry["character_frequency"] = counts.char_counts.get(n.text, 0)
    if n.kind == "bridge":
        entry["serves"] = [family.piece_text(p) or p for p in n.serves]
    return entry


def first_piece_counts(base: Tokenizer, new: list[NewPiece], counts: Counts) -> dict[str, int]:
    """Emissions of each base piece that begins a new token, by id (JSON keys are strings).

    A new token's own count is in `new_tokens`; with these, the model-extension step knows every member's
    share of its first-piece group (megaeeve/model/fit.py: the output prior) without reading the corpus again.
    """
    firsts = {base.model.tokenize(n.piece)[0].id for n in new}
    return {str(i): int(counts.token_counts[i]) for i in sorted(firsts)}


def _below_threshold(new_tokens: list[dict[str, Any]], threshold: int) -> dict[str, int]:
    """How many new tokens are emitted fewer than `threshold` times: bridges, and characters kept by step 6."""
    low = [t for t in new_tokens if t["frequency"] < threshold]
    bridges = sum(t["kind"] == "bridge" for t in low)
    return {"tokens": len(low), "bridges": bridges, "characters": len(low) - bridges}


def _write(out: Path, hf: Any, result: Refined, report: dict[str, Any], probe: list[str]) -> None:
    """Save the base's transformers config, our tokenizer.json, check it loads back, then the report."""
    from transformers import AutoTokenizer

    hf.save_pretrained(str(out))
    for stale in ("vocab.json", "merges.txt", "tokenizer.model"):  # the base's, not ours
        (out / stale).unlink(missing_ok=True)
    (out / "tokenizer.json").write_text(result.target.json(), encoding="utf-8")
    loaded = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    expected = result.target.tokenizer.get_vocab_size(with_added_tokens=True)
    if len(loaded) != expected:
        raise ExpansionError(f"internal: {out} loads with {len(loaded)} tokens, expected {expected}")
    for text in probe:
        if loaded(text, add_special_tokens=False)["input_ids"] != result.target.tokenizer.encode(
            text, add_special_tokens=False
        ).ids:
            raise ExpansionError(f"internal: transformers tokenizes {text[:40]!r} differently from tokenizer.json")
    write_json(out / REPORT, report)


def expand_vocab(cfg: ExpandConfig, log: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run steps 1-7 and write `cfg.output` atomically (rank 0 under MPI); returns the report. `log` takes each
    progress message (rank 0 only; default: this module's logger)."""
    comm = mpi_world()
    rank = comm.Get_rank() if comm else 0
    say = log if rank == 0 else (lambda *a, **k: None)
    if Path(cfg.output).exists() and not cfg.overwrite:
        raise OutputExistsError(f"{cfg.output} already exists; pass --overwrite to replace it")
    if cfg.min_frequency_per_million is None and cfg.min_frequency is None:
        raise ExpansionError("give --min-frequency or --min-frequency-per-million")
    threshold = (
        Threshold(per_million=cfg.min_frequency_per_million)
        if cfg.min_frequency_per_million is not None
        else Threshold(count=cfg.min_frequency)
    )
    script = parse_script(cfg.script)
    hf, base = load_base(cfg.base_tokenizer)
    family = detect_family(base)
    corpus = expand_inputs(cfg.corpus)
    count_files = expand_inputs(cfg.count_corpus) if cfg.count_corpus else corpus
    held = list(_documents(expand_inputs(cfg.held_out), "held-out corpus")) if cfg.held_out else []
    # Without --english, the English text bundled with Python: the "same ids as the base" check always runs.
    english = list(_documents(expand_inputs(cfg.english), "English corpus")) if cfg.english else english_documents()

    say(
        f"training the intermediate {family.name} BPE ({cfg.intermediate_vocab_size} tokens) on {len(corpus)} file(s),"
        f" at most about {cfg.intermediate_sample_bytes:,} bytes of text"
    )
    sample = _Tally()
    docs = _documents(corpus, "corpus", sample_documents(corpus, cfg.intermediate_sample_bytes), sample)
    intermediate = train_intermediate(
        base, family, docs=docs, vocab_size=cfg.intermediate_vocab_size, show_progress=cfg.progress and rank == 0
    )
    candidates = target_candidates(intermediate, base, family, script)
    if not candidates:
        raise ExpansionError(
            f"nothing to add: the intermediate tokenizer trained on {', '.join(corpus)} has no {script.name}"
            " token that the base lacks (is the corpus in the target language?)"
        )
    say(f"{len(candidates)} {script.name} candidates not in the base vocabulary")
    result = refine(
        base, family, script=script, candidates=candidates, count_files=count_files, threshold=threshold,
        workers=cfg.workers, progress=cfg.progress, log=say,
    )

    target = result.target
    vocab_size = target.tokenizer.get_vocab_size(with_added_tokens=True)
    new_tokens = [_token_entry(n, result.counts, family) for n in target.new]
    report: dict[str, Any] = {
        "base_tokenizer": {
            "path": str(cfg.base_tokenizer),
            "fingerprint": tokenizer_fingerprint(base),
            "family": family.name,
        },
        "base_vocab_size": target.base_vocab_size,
        "vocab_size": vocab_size,
        "new_token_ids": {"first": target.base_vocab_size, "last": vocab_size - 1, "count": len(target.new)},
        "settings": {
            "corpus": corpus,
            "count_corpus": count_files,
            "intermediate_vocab_size": cfg.intermediate_vocab_size,
            "intermediate_sample_bytes": cfg.intermediate_sample_bytes,
            "min_frequency": cfg.min_frequency if cfg.min_frequency_per_million is None else None,
            "min_frequency_per_million": cfg.min_frequency_per_million,
            "resolved_min_frequency": result.threshold,
            "script": {"name": script.name, "ranges": [f"U+{a:04X}-U+{b:04X}" for a, b in script.ranges]},
            "intermediate_candidates": len(candidates),
        },
        "intermediate_training_text": {"documents": sample.documents, "chars": sample.chars},
        "counting_corpus": {
            "documents": result.counts.documents,
            "chars": result.counts.chars,
            "tokens": result.counts.tokens,
        },
        "rounds": [asdict(r) for r in result.rounds],
        # Selected tokens no chain of safe merges reaches (their merges could fire on other scripts).
        "unreachable": [t for r in result.rounds for t in r.unreachable],
        "new_tokens": new_tokens,
        "below_threshold": _below_threshold(new_tokens, result.threshold),
        "first_piece_counts": first_piece_counts(base, target.new, result.counts),
        "chars_per_token": {
            "held_out": {**chars_per_token(base, target.tokenizer, held), "source": ", ".join(cfg.held_out)}
            if held
            else None,
            "english": {
                **chars_per_token(base, target.tokenizer, english),
                "source": ", ".join(cfg.english) if cfg.english else "pydoc_data.topics (bundled with Python)",
            },
        },
    }
    for name, stats in report["chars_per_token"].items():
        if stats:
            say(
                f"{name}: {stats['base_chars_per_token']} -> {stats['expanded_chars_per_token']} chars/token"
                f" (identical ids: {stats['identical_ids']})"
            )
    failure = None
    if rank == 0:
        try:
            with atomic_dir(cfg.output, overwrite=cfg.overwrite) as tmp:
                probe = held[:20] + english[:20] + [n.text for n in target.new if n.text][:50]
                _write(tmp, hf, result, report, probe)
            say(f"wrote {cfg.output}: {len(target.new)} new tokens, ids {target.base_vocab_size}..{vocab_size - 1}")
        except BaseException as e:  # other ranks must not wait forever for a rank that failed
            failure = e
    if comm is not None and comm.bcast(failure is not None, root=0) and rank != 0:
        raise ExpansionError(f"rank 0 failed to write {cfg.output}")
    if failure is not None:
        raise failure
    return report


def read_report(directory: str | Path) -> dict[str, Any]:
    """The expansion report of an expanded tokenizer directory (what the model-extension step reads)."""
    return json.loads((Path(directory) / REPORT).read_text(encoding="utf-8"))
