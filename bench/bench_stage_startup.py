"""Start-up of a stage against the number of documents: launch to the first optimizer step.

A stage's start builds its indices (document order, samples, shuffle; with `new_token_bias` the
per-document new-token counts too) on rank 0 with numpy, while the other ranks wait for the cache.
This measures, on synthetic datasets of N documents (8-24 tokens each, a tenth of the ids new), the
wall time from launching a 2-rank stage (tiny random Phi, ZeRO-3 on CPU, `new_token_bias: 1.0`) to
its first train record in metrics.jsonl: cold (empty index cache) and cached (the same stage rerun
with --overwrite, the cache kept). Goal: cold, 10x the documents costs at most 1.25x; cached, flat.

    python bench/bench_stage_startup.py [--docs 100000 1000000 10000000] [--nproc 2] [--write-results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.common import processor, write_results  # noqa: E402
from bench.models import tiny_phi_stage0  # noqa: E402


def synthetic(prefix: Path, documents: int, vocab: int, base: int, seed: int = 0) -> Path:
    from megaeeve.data.indexed import IndexedDatasetWriter

    rng = np.random.default_rng(seed)
    writer = IndexedDatasetWriter(str(prefix), np.uint16)
    for start in range(0, documents, 1_000_000):
        n = min(1_000_000, documents - start)
        lengths = rng.integers(8, 25, size=n)
        tokens = rng.integers(0, base, size=int(lengths.sum()))
        new = rng.random(len(tokens)) < 0.1
        tokens[new] = rng.integers(base, vocab, size=int(new.sum()))
        writer.add_documents(tokens.astype(np.uint16), lengths)
    writer.finalize()
    return prefix


def first_step_s(ds: Path, cfg: Path, log: Path, nproc: int, *extra: str) -> float:
    from _train_helpers import launch, metrics, read_log, wait

    started = time.time()
    codes = wait(launch(["--ds_config", str(ds), "--config", str(cfg), "--stage", "1", *extra], nproc, log))
    if codes != [0] * nproc:
        raise SystemExit(f"stage failed {codes}:\n{read_log(log)}")
    first = next(r for r in metrics(cfg.parent / "run" / "stage-1") if r["kind"] == "train")
    return first["time"] - started


def main() -> None:
    from _train_helpers import ds_config, run_config
    from megaeeve.model import read_model_meta

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--write-results", action="store_true", help="replace this bench's section of bench/RESULTS.md")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="megaeeve-startup-") as d:
        tmp = Path(d)
        model = tiny_phi_stage0(tmp, 64, 2)
        meta = read_model_meta(model)
        ds = ds_config(tmp / "ds.json", micro=1, accum=1)
        for n in args.docs:
            t0 = time.perf_counter()
            prefix = synthetic(tmp / f"docs{n}", n, meta.vocab_size, meta.base_vocab_size)
            written = time.perf_counter() - t0
            work = tmp / f"run{n}"
            work.mkdir()
            sources = [{"prefix": str(prefix), "weight": 1.0}]
            cfg = run_config(work / "run.yaml", work / "run", model, sources, {1: {"steps": 1}}, run_stages=[1],
                             data={"sources": sources, "valid_fraction": 0.01, "new_token_bias": 1.0},
                             training={"eval_samples": 1, "checkpoint_every": 0, "report_to": [],
                                       "progress_bar": False})
            cold = first_step_s(ds, cfg, work / "cold.log", args.nproc)
            cached = first_step_s(ds, cfg, work / "cached.log", args.nproc, "--overwrite")
            rows.append((n, written, cold, cached))
            print(f"{n:,} documents: cold {cold:.1f} s, cached {cached:.1f} s (dataset written in {written:.1f} s)",
                  file=sys.stderr, flush=True)
    base_cold, base_cached = rows[0][2], rows[0][3]
    lines = [
        "## Stage start-up against the number of documents",
        "",
        f"`python bench/bench_stage_startup.py` on {processor()}, {args.nproc} CPU ranks "
        "(gloo, ZeRO-3, tiny Phi), `new_token_bias: 1.0`: launch to the first optimizer step.",
        "",
        "| documents | cold start (s) | x first row | cached start (s) | x first row |",
        "|---|---|---|---|---|",
        *[f"| {n:,} | {cold:.1f} | {cold / base_cold:.2f} | {cached:.1f} | {cached / base_cached:.2f} |"
          for n, _, cold, cached in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_results(text, REPO / "bench" / "RESULTS.md")


if __name__ == "__main__":
    main()
