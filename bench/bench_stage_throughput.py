"""Tokens/s per stage on CPU, through the real trainer (2 ranks, gloo, ZeRO-3, fp32).

Builds a small random Phi (hidden --hidden, --layers layers, GPT-2 vocabulary + new Korean tokens,
split embeddings) and Korean + English datasets from the bundled text, then runs stages 1..7 with
megaeeve/train.py and reads tokens/s from each stage's metrics.jsonl (median over the steps after
the first). Frozen embedding stages skip weight gradients and optimizer work for most parameters,
so they run faster than the full stage 6.

    python bench/bench_stage_throughput.py [--steps 8] [--hidden 256] [--layers 4] [--seq-length 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from megaeeve import assets
from megaeeve.model import extend_model
from megaeeve.tokenizer_io import load_tokenizer


def stage0(tmp: Path, hidden: int, layers: int) -> Path:
    from _train_helpers import NEW_TOKENS
    from transformers import PhiConfig, PhiForCausalLM

    base = PhiForCausalLM(PhiConfig(vocab_size=50_304, hidden_size=hidden, intermediate_size=4 * hidden,
                                    num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                                    tie_word_embeddings=False))
    base.save_pretrained(str(tmp / "base"))
    gpt2 = assets.save_hf_tokenizer(assets.gpt2_tokenizer(), tmp / "gpt2")
    tok = load_tokenizer(gpt2)
    tok.add_tokens(NEW_TOKENS)
    expanded = assets.save_hf_tokenizer(tok, tmp / "expanded")
    extend_model(tmp / "base", gpt2, tokenizer=expanded, output=tmp / "stage0")
    return tmp / "stage0"


def main() -> None:
    from _train_helpers import ds_config, metrics, read_log, run_config, train_stage, write_prefix

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="megaeeve-bench-") as d:
        tmp = Path(d)
        model = stage0(tmp, args.hidden, args.layers)
        ko, _ = assets.split_held_out(assets.korean_documents())
        sources = [{"prefix": str(write_prefix(tmp / "ko", model, ko[:400], 2000)), "weight": 0.7, "name": "ko"},
                   {"prefix": str(write_prefix(tmp / "en", model, assets.english_documents(), 2000)), "weight": 0.3,
                    "name": "en"}]
        cfg = run_config(tmp / "run.yaml", tmp / "run", model, sources, {s: {"steps": args.steps} for s in range(1, 8)},
                         seq_length=args.seq_length)
        ds = ds_config(tmp / "ds.json", micro=args.micro, accum=1)
        rows = []
        for s in range(1, 8):
            log = tmp / f"stage{s}.log"
            if train_stage(ds, cfg, s, log) != 0:
                sys.exit(f"stage {s} failed:\n{read_log(log)}")
            train = [r for r in metrics(tmp / "run" / f"stage-{s}") if r["kind"] == "train"][1:]
            rows.append((s, statistics.median(r["tokens_per_s"] for r in train),
                         statistics.median(r["step_time_s"] for r in train)))
        meta = json.loads((model / "megaeeve_model.json").read_text())
    full = rows[5][1]
    print(f"CPU, 2 ranks (gloo, ZeRO-3, fp32): Phi hidden {args.hidden}, {args.layers} layers, vocab "
          f"{meta['base_vocab_size']:,} + {meta['num_added']} new, seq {args.seq_length}, "
          f"global batch {2 * args.micro} samples, median of steps 2..{args.steps}\n")
    print("| stage | tokens/s | step time (s) | vs stage 6 |")
    print("|---|---|---|---|")
    for s, tps, t in rows:
        print(f"| {s} | {tps:,.0f} | {t:.3f} | {tps / full:.2f}x |")


if __name__ == "__main__":
    main()
