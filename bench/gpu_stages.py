"""Tokens/s and MFU per stage on one GPU: ZeRO-3, bf16, phi-2 shapes, random weights (prepared for a lent H100/H200).

Each stage runs in a fresh process (a stage is an engine of its own, as in training): the split
phi-2-shaped model (hidden 2560, --layers layers, vocab 50,295 + --new-tokens, lm_head bias) is built
with random weights, frozen by the stage table, wrapped by the same initialize_engine as
megaeeve/train.py, warmed up, then timed over --steps optimizer steps on random token ids.
MFU = the stage's model FLOPs per token (megaeeve.training.throughput: forward, activation gradients
only where something below the head trains, weight gradients of trainable parameters) x tokens/s /
the device's dense bf16 peak. The optimizer is ds_configs/zero3.json's (fused torch AdamW).

    python bench/gpu_stages.py [--stages 1 2 3 4 5 6 7] [--layers 32] [--micro 4] [--seq-length 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def run_one(args: argparse.Namespace) -> dict:
    import deepspeed
    import torch

    from bench.models import phi2_config, phi2_meta
    from megaeeve.model import parameter_roles
    from megaeeve.model.checkpoint import build_split_model
    from megaeeve.stages import DEFAULT_STAGES
    from megaeeve.training.engine import freeze_for_stage, initialize_engine
    from megaeeve.training.throughput import flops_per_token, full_numel, peak_tflops

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    deepspeed.init_distributed()
    torch.cuda.set_device(0)
    torch.manual_seed(0)
    meta = phi2_meta(args.new_tokens)
    with torch.device("cuda"):
        model = build_split_model(phi2_config(meta.padded_vocab_size, args.layers), meta, torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    stage = DEFAULT_STAGES[args.stage]
    roles = parameter_roles(model)
    trainable = freeze_for_stage(model, roles, stage)
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=args.micro, gradient_accumulation_steps=1)
    fpt = flops_per_token(model, roles, args.seq_length, trainable)
    engine = initialize_engine(model, roles, stage=stage, ds_config=ds, total_steps=args.steps + args.warmup)
    ids = torch.randint(0, meta.vocab_size, (args.micro, args.seq_length + 1), device="cuda")

    def step() -> None:
        logits = engine(input_ids=ids[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        engine.backward(loss)
        engine.step()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens_per_s = args.steps * args.micro * args.seq_length / elapsed
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(torch.device("cuda", 0), args.peak_tflops)
    return {"stage": args.stage, "device": name, "trainable": sum(full_numel(p) for n, p in model.named_parameters() if n in set(trainable)),
            "tokens_per_s": tokens_per_s, "tflops": fpt * tokens_per_s / 1e12,
            "mfu": fpt * tokens_per_s / (peak * 1e12) if peak else None,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", type=int, nargs="+", default=list(range(1, 8)))
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)  # one stage, in a child process
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=8705)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the device (default: by name)")
    args = p.parse_args()
    if args.stage is not None:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    rows = []
    for s in args.stages:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--stage", str(s)], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"stage {s} failed (exit {out.returncode}):\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[7:]))
        print(f"stage {s}: {rows[-1]}", file=sys.stderr, flush=True)
    if not rows:
        sys.exit(1)
    print(f"{rows[0]['device']}: ZeRO-3 bf16, phi-2 shapes, {args.layers} layers, micro batch {args.micro} x "
          f"{args.seq_length} tokens, {args.steps} timed steps after {args.warmup}\n")
    print("| stage | trainable params | tokens/s | TFLOP/s | MFU | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['stage']} | {r['trainable']:,} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {mfu} | "
              f"{r['max_memory_gib']:.1f} |")


if __name__ == "__main__":
    main()
