"""What several benches share, so that no bench imports another.

- the machine a table was measured on (`processor`, `machine`);
- a command's cost in a fresh process (`measure`), with a source tree's own megaeeve (`tree_env`);
- the section of bench/RESULTS.md a bench owns (`write_results`);
- the tokenizing benches' corpus (`make_corpus`) and their limit, the bare tokenizers-library call
  (`method_encode`, timed by `time_batches`).

Benches put the checkout on sys.path and import this as `bench.common`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BATCH_CHARS = 1 << 20


# -- the machine -----------------------------------------------------------------------------------
def processor() -> str:
    """The processor as Python names it: the short form the benches print beside their rank counts."""
    return platform.processor() or platform.machine()


def machine(with_torch: bool = False) -> str:
    """Cores, CPU model, RAM and Python (with torch: the GPU, when one is visible, and torch's version):
    the header line of a RESULTS.md section, since its figures mean little without the machine."""
    cpu = processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    libraries = ""
    if with_torch:
        import torch

        gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
        libraries = f"{gpu}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM{libraries}, Python {platform.python_version()}"


# -- a command's cost --------------------------------------------------------------------------------
def tree_env(tree: Path) -> dict[str, str]:
    """This environment with `tree` first on PYTHONPATH: a tools/ script of that source tree then runs
    that tree's megaeeve, not the installed one (the scripts no longer edit sys.path themselves)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}


def rss_wrapped(cmd: list[str], report: Path) -> list[str]:
    """`cmd` under a small Python wrapper that waits for it and writes its exit status, peak RSS (KiB), CPU s
    (user + system of its whole tree) and wall s to `report` as JSON; the wrapper exits with cmd's code.

    Peak RSS comes from wait4 in the wrapper because Linux carries a process's peak RSS over fork + exec: a
    child started straight from a large bench process reports at least that process's own RSS.
    """
    code = ("import json, os, subprocess, sys, time\n"
            "t = time.perf_counter(); p = subprocess.Popen(sys.argv[2:]); _, status, ru = os.wait4(p.pid, 0)\n"
            "open(sys.argv[1], 'w').write(json.dumps({'status': status, 'rss_kb': ru.ru_maxrss,\n"
            "    'cpu': ru.ru_utime + ru.ru_stime, 'wall': time.perf_counter() - t}))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
    return [sys.executable, "-c", code, str(report), *cmd]


def wrapped_usage(report: Path, cmd: list[str], output: str) -> dict:
    """rss_wrapped's report of `cmd`; where the wrapper wrote none (`cmd` could not be started: a missing
    program, a bad path) an error that shows `cmd` and its output instead of a missing-file error."""
    if not report.is_file():
        raise RuntimeError(f"{' '.join(map(str, cmd))} did not run (no usage report {report}):\n{output[-3000:]}")
    return json.loads(report.read_text())


def measure(cmd: list[str], stderr: bool = False, env: dict[str, str] | None = None) -> tuple[str, float, float, float]:
    """(stdout, and stderr too when asked; wall s, peak RSS MiB, CPU s) of `cmd` run in `env` (default:
    this one), through rss_wrapped. Peak RSS is that of the largest process of the tree; CPU is user + system
    of the whole tree.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        res = subprocess.run(rss_wrapped(cmd, report), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT if stderr else subprocess.PIPE, text=True, env=env)
        info = wrapped_usage(report, cmd, (res.stderr or "") + (res.stdout or ""))
    if info["status"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(res.stderr or res.stdout)[-3000:]}")
    return res.stdout, info["wall"], info["rss_kb"] / 1024, info["cpu"]


# -- RESULTS.md ------------------------------------------------------------------------------------
def write_results(text: str, path: Path) -> None:
    """Replace the section of RESULTS.md that `text` heads (its first line); other benches own the others."""
    from megaeeve.atomic import atomic_file

    section = text.splitlines()[0].strip()
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == section)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    except StopIteration:
        if lines and lines[-1].strip():
            lines.append("\n")
        start = end = len(lines)
    new = lines[:start] + [text.rstrip("\n") + "\n\n"] + lines[end:]
    with atomic_file(path, "w") as f:
        f.write("".join(new).rstrip("\n") + "\n")


# -- the tokenizing benches' corpus and limit ---------------------------------------------------------
def make_corpus(path: Path, lang: str, target_bytes: int) -> tuple[int, int]:
    """A JSONL file of megaeeve.assets' real Korean (`lang` "Korean") or English documents, repeated to
    about `target_bytes`; returns (documents, UTF-8 bytes of text). Repeated words reach the BPE word
    cache, as on any real corpus."""
    from megaeeve import assets

    docs = assets.korean_documents() if lang == "Korean" else assets.english_documents()
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs]
    per_copy = sum(len(line.encode()) for line in lines)
    copies = max(1, round(target_bytes / per_copy))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.writelines(lines)
    return copies * len(docs), copies * sum(len(d.encode()) for d in docs)


def read_texts(path: str) -> list[str]:
    """The "text" of every line of a JSONL file, read before a timer starts."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def method_encode(args: argparse.Namespace, fast: bool) -> dict:
    """The limit of a tokenizing bench: `Tokenizer.encode_batch_fast` (no offsets; `encode_batch` when not
    `fast`) over args.input's texts already in memory, Rust threads on args.workers; nothing written."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    from megaeeve.tokenizer_io import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    return time_batches(read_texts(args.input), lambda batch: sum(len(e.ids) for e in encode(batch, add_special_tokens=False)))


def time_batches(texts: list[str], count: Callable[[list[str]], int]) -> dict:
    """Tokens and seconds of `count` (texts -> tokens) over ~BATCH_CHARS batches of `texts`."""
    start = time.perf_counter()
    tokens, batch, chars = 0, [], 0
    for text in texts + [None]:
        if text is not None:
            batch.append(text)
            chars += len(text)
        if batch and (text is None or chars >= BATCH_CHARS):
            tokens += count(batch)
            batch, chars = [], 0
    return {"seconds": time.perf_counter() - start, "docs": len(texts), "tokens": tokens}
