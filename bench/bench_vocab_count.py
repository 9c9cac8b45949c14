#!/usr/bin/env python
"""Frequency counting (EEVE step 4) against the bare tokenizer, every method in a fresh process.

Methods (same tokenizer: phi-2's expanded by tools/expand_vocab.py on konlpy's Korean; same threads):
- encode_batch_fast (the limit, the fastest bare call): `Tokenizer.encode_batch_fast` over the texts already
  in memory, ~1M-character batches, Rust threads on all workers (bench/common.py: method_encode); nothing
  read, nothing counted.
- encode_batch: the same with offsets.
- count: megaeeve.vocab.count.count_corpus on the JSONL file with `workers` processes: reading, JSON,
  encoding, per-id and per-character counts (its own timer, which includes starting the worker
  processes; interpreter start-up and imports excluded).
- count, mpiexec -n 2: the same split over two MPI ranks of one process each, counts summed.

Throughput is tokens/s, the median of `--repeats` interleaved runs. Peak RSS (wait4) of `count` at 1x
and 8x the corpus shows that memory does not grow with it. Writes bench/RESULTS.md "## Vocabulary expansion".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, make_corpus, measure, method_encode, tree_env, write_results  # noqa: E402

SECTION = "## Vocabulary expansion"


def method_count(args: argparse.Namespace) -> dict:
    from megaeeve.tokenizer_io import load_tokenizer
    from megaeeve.mpi import mpi_world
    from megaeeve.vocab.count import count_corpus
    from megaeeve.vocab.scripts import parse_script

    tok = load_tokenizer(args.tokenizer)
    counts = count_corpus(tok, [args.input], script=parse_script("hangul"), workers=args.workers, progress=False)
    comm = mpi_world()
    if comm is not None and comm.Get_rank() != 0:
        return {}
    return {"seconds": counts.seconds, "docs": counts.documents, "tokens": counts.tokens}


METHODS = {
    "encode_batch": lambda a: method_encode(a, fast=False),
    "encode_batch_fast": lambda a: method_encode(a, fast=True),
    "count": method_count,
}


def one_run(method: str, corpus: Path, tokenizer: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--method", method, "--input", str(corpus), "--tokenizer", str(tokenizer)]
    if method == "count-mpi2":
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2"] + cmd[:3] + ["count"] + cmd[4:] + ["--workers", "1"]
    else:
        cmd += ["--workers", str(workers)]
    out, wall, rss, cpu = measure(cmd)
    rows = [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
    return {**next(r for r in rows if r), "rss": rss, "wall": wall, "cpu": cpu}


def expanded_tokenizer(tmp: Path) -> Path:
    """phi-2's tokenizer expanded on konlpy's Korean (small thresholds: the corpus is tiny)."""
    from megaeeve import assets

    base = assets.save_hf_tokenizer(assets.phi2_tokenizer(), tmp / "phi2")
    corpus = assets.write_jsonl(assets.korean_documents(), tmp / "ko-train.jsonl")
    out = tmp / "expanded"
    subprocess.run([sys.executable, str(REPO / "tools/expand_vocab.py"), "--base-tokenizer", str(base),
                    "--corpus", str(corpus), "--output", str(out), "--intermediate-vocab-size", "3000",
                    "--min-frequency", "5", "--no-progress"], check=True, stdout=subprocess.DEVNULL,
                   env=tree_env(REPO))  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help="expanded tokenizer dir (default: built here)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--mb", type=float, default=16, help="Korean corpus size at 1x (MB of JSONL)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="'' to not write")
    args = p.parse_args()
    if args.method:
        result = METHODS[args.method](args)
        if result:
            print(json.dumps(result))
        return 0

    methods = ["encode_batch", "encode_batch_fast", "count", "count-mpi2"]
    with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
        tmp_path = Path(tmp)
        tokenizer = Path(args.tokenizer) if args.tokenizer else expanded_tokenizer(tmp_path)
        corpus = tmp_path / "korean.jsonl"
        n_docs, n_bytes = make_corpus(corpus, "Korean", int(args.mb * 1e6))
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits every method alike
            for m in methods:
                runs[m].append(one_run(m, corpus, tokenizer, args.workers))
                print(f"{m}: {runs[m][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
        tokens = runs["count"][0]["tokens"]
        assert all(r["tokens"] == tokens for m in methods for r in runs[m]), "methods disagree on the token count"
        seconds = {m: statistics.median(r["seconds"] for r in runs[m]) for m in methods}
        rss = {m: max(r["rss"] for r in runs[m]) for m in methods}
        cpu = {m: statistics.median(r["cpu"] for r in runs[m]) for m in methods}
        big = tmp_path / "korean-8x.jsonl"
        make_corpus(big, "Korean", int(args.mb * 8e6))
        rss8 = one_run("count", big, tokenizer, args.workers)

    table = render(methods, seconds, cpu, rss, rss8, tokens, n_docs, n_bytes, args)
    print(table)
    if args.results:
        write_results(table, Path(args.results))
    return 0


def render(methods, seconds, cpu, rss, rss8, tokens, n_docs, n_bytes, args) -> str:
    label = {"count": f"count ({args.workers} processes)", "count-mpi2": "count, mpiexec -n 2 (1 process each)"}
    base, base_cpu = tokens / seconds["encode_batch_fast"], tokens / cpu["encode_batch_fast"]  # the fastest bare call
    out = [
        SECTION, "",
        f"Machine: {machine()}. Workers: {args.workers}. Tokenizer: phi-2's expanded on konlpy Korean"
        f" (tools/expand_vocab.py, intermediate 3000, min frequency 5). Corpus: {n_docs:,} Korean documents,"
        f" {n_bytes / 1e6:.1f} MB of text, {tokens:,} tokens. Median of {args.repeats} interleaved runs;"
        " each method in a fresh process. CPU seconds: user + system of the process tree, start-up included"
        f" (load average when it ended: {os.getloadavg()[0]:.1f}). `python bench/bench_vocab_count.py`", "",
        "| method | seconds | tokens/s | vs encode_batch_fast | CPU s | tokens per CPU s | vs encode_batch_fast | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for m in methods:
        rate = tokens / seconds[m]
        per_cpu = tokens / cpu[m]
        out.append(
            f"| {label.get(m, m)} | {seconds[m]:.2f} | {rate:,.0f} | {rate / base:.2f} | {cpu[m]:.2f} | {per_cpu:,.0f}"
            f" | {per_cpu / base_cpu:.2f} | {rss[m]:.0f} |"
        )
    out += [
        "",
        f"Memory: `count` peaks at {rss['count']:.0f} MiB on the corpus and {rss8['rss']:.0f} MiB on 8x the corpus"
        f" ({rss8['tokens']:,} tokens): it streams.",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
