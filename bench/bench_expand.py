#!/usr/bin/env python
"""tools/expand_vocab.py as a whole: what it produces (held-out characters per token, new tokens) and its
peak memory at 1x and 10x the corpus. Every run is the command-line tool in a fresh process.

Quality: phi-2's tokenizer expanded on konlpy's Korean (train part), measured on the held-out part, at two
settings (intermediate vocabulary size, minimum frequency). `--src LABEL=DIR` adds the same runs with the
tool of another source tree (for example `git archive` of an older commit), so two versions compare at the
same settings.

Memory: peak RSS (wait4, largest process of the tree) of the whole expand_vocab. The corpus is Korean made of
konlpy's Hangul syllables drawn at their frequencies into random words of 1-5 syllables: nearly every word
is new, the worst case for the intermediate tokenizer's trainer, whose word-count table grows with the
distinct words it sees (repeating a real corpus would not grow it). Each size runs with the default
--intermediate-sample-bytes (larger than these corpora: trained on all of it) and with a small sample.
Writes bench/RESULTS.md "## Vocabulary expansion: merge order, memory".
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, measure, tree_env, write_results  # noqa: E402

SECTION = "## Vocabulary expansion: merge order, memory"
SETTINGS = ((3000, 5), (6000, 8))  # (intermediate vocabulary size, minimum frequency)


def expand(src: Path, base: Path, corpus: Path, out: Path, extra: list[str]) -> tuple[dict, float, float]:
    """(report, peak RSS MiB, wall s) of src's tools/expand_vocab.py."""
    cmd = [sys.executable, str(src / "tools/expand_vocab.py"), "--base-tokenizer", str(base), "--corpus", str(corpus),
           "--output", str(out), "--workers", "2", "--no-progress", "--overwrite", *extra]  # fmt: skip
    _, wall, rss, _ = measure(cmd, env=tree_env(src))
    return json.loads((out / "expansion_report.json").read_text(encoding="utf-8")), rss, wall


def quality(sources: dict[str, Path], tmp: Path) -> list[str]:
    from megaeeve import assets

    train, held = assets.split_held_out(assets.korean_documents())
    corpus, held_out = assets.write_jsonl(train, tmp / "ko.jsonl"), assets.write_jsonl(held, tmp / "ko-held.jsonl")
    base = assets.save_hf_tokenizer(assets.phi2_tokenizer(), tmp / "phi2")
    rows = ["| source | intermediate, min frequency | new tokens (selected + bridges) | rounds | held-out chars/token"
            " | English ids identical |", "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for size, freq in SETTINGS:
        for label, src in sources.items():
            extra = ["--intermediate-vocab-size", str(size), "--min-frequency", str(freq), "--held-out", str(held_out)]
            report, _, _ = expand(src, base, corpus, tmp / "q", extra)
            kinds = collections.Counter(t["kind"] for t in report["new_tokens"])
            cpt = report["chars_per_token"]
            rows.append(
                f"| {label} | {size}, {freq} | {len(report['new_tokens']):,} ({kinds['selected']:,} + {kinds['bridge']:,})"
                f" | {len(report['rounds'])} | {cpt['held_out']['base_chars_per_token']:.4f} ->"
                f" {cpt['held_out']['expanded_chars_per_token']:.4f} | {cpt['english']['identical_ids']} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def random_word_corpus(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Korean of random words (konlpy's syllables at their frequencies); returns its documents."""
    from megaeeve import assets

    counts = collections.Counter(c for d in assets.korean_documents() for c in d if "\uac00" <= c <= "\ud7a3")
    syllables, weights = list(counts), list(counts.values())
    rng, size, docs = random.Random(seed), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target_bytes:
            words = ("".join(rng.choices(syllables, weights, k=rng.randint(1, 5))) for _ in range(50))
            line = json.dumps({"text": " ".join(words)}, ensure_ascii=False) + "\n"
            f.write(line)
            size, docs = size + len(line.encode()), docs + 1
    return docs


def memory(mb: float, sample_mb: float, tmp: Path) -> list[str]:
    from megaeeve import assets

    base = assets.save_hf_tokenizer(assets.phi2_tokenizer(), tmp / "phi2-m")
    rows = ["| corpus | intermediate trained on | peak RSS (MiB) | wall s |", "|---|---|---:|---:|"]
    for scale in (1, 10):
        corpus = tmp / f"random-{scale}x.jsonl"
        docs = random_word_corpus(corpus, int(mb * scale * 1e6))
        for sample in (None, sample_mb):
            extra = ["--intermediate-vocab-size", "3000", "--min-frequency-per-million", "150"]
            extra += ["--intermediate-sample-bytes", str(int(sample * 1e6))] if sample else []
            report, rss, wall = expand(REPO, base, corpus, tmp / "m", extra)
            text = report["intermediate_training_text"]
            what = (f"sample (--intermediate-sample-bytes {int(sample * 1e6):,})" if sample
                    else "default --intermediate-sample-bytes: all of it")  # fmt: skip
            rows.append(f"| {scale}x: {mb * scale:g} MB, {docs:,} documents | {what}: {text['documents']:,} documents,"
                        f" {text['chars']:,} characters | {rss:,.0f} | {wall:.0f} |")  # fmt: skip
            print(rows[-1], file=sys.stderr, flush=True)
        corpus.unlink()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", nargs="*", default=[], metavar="LABEL=DIR", help="other source trees to compare")
    p.add_argument("--mb", type=float, default=2, help="memory corpus at 1x (MB of JSONL)")
    p.add_argument("--sample-mb", type=float, default=1, help="the small --intermediate-sample-bytes, in MB")
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="'' to not write")
    args = p.parse_args()
    sources = {label: Path(d) for label, d in (s.split("=", 1) for s in args.src)} | {"this tree": REPO}
    with tempfile.TemporaryDirectory(prefix="bench-expand-") as tmp:
        q = quality(sources, Path(tmp))
        m = memory(args.mb, args.sample_mb, Path(tmp))
    cmd = shlex.join(["python", "bench/bench_expand.py", *(["--src", *args.src] if args.src else [])])
    text = "\n".join([
        SECTION, "",
        f"Machine: {machine()}, shared with other jobs. `{cmd}`. Each figure is one run of"
        " tools/expand_vocab.py (`--workers 2`) in a fresh process; the outputs are deterministic.", "",
        "Quality: phi-2's tokenizer expanded on konlpy's Korean (train split), characters per token on the held-out"
        " split (base -> expanded).", "", *q, "",
        "Memory of the whole run (intermediate 3000, 150 per million) on Korean of random words (every word new:"
        " the worst case for the intermediate trainer's word table):", "", *m,
    ]) + "\n"  # fmt: skip
    print(text)
    if args.results:
        write_results(text, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
