"""Optimizer-state + fp32-master memory per stage: split parameters (megaeeve) vs the card's gradient hook.

The EEVE model card freezes rows with a gradient hook (`grad[:n_old] = 0`) on whole trainable
matrices: AdamW then keeps an fp32 master and two moments for every row of the input embedding
and/or lm_head, old rows included. megaeeve splits each matrix into `original` and `added`
parameters, so a stage pays only for what it trains.

Counts are exact, from the real models' parameter shapes (built on the meta device, no weights):
phi-2 (hidden 2560, 32 layers, lm_head bias) with the base tokenizer's 50,295 tokens plus
--new-tokens new ones, vocabulary padded to a multiple of 64. Bytes = 12 per trainable parameter
(fp32 master 4 + Adam exp_avg 4 + exp_avg_sq 4), all ranks together; ZeRO-3 divides it by the
number of ranks in both approaches. `--measure STAGE...` additionally builds real single-rank ZeRO-3
engines (DS_ACCELERATOR=cpu, shallow model: --layers) and reports the optimizer tensors they hold.

    python bench/bench_stage_memory.py [--new-tokens 8705] [--layers 32] [--measure 1 7 --layers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.models import phi2_config, phi2_meta

from megaeeve.model import parameter_roles
from megaeeve.model.checkpoint import ModelMeta, build_split_model
from megaeeve.stages import DEFAULT_STAGES, trainable_names
from megaeeve.training.engine import optimizer_state_bytes

# For the card's approach, the matrix holding each stage's trainable rows becomes trainable whole.
HOOK_MATRICES = {"input_original": "input", "input_added": "input", "output_original": "output",
                 "output_added": "output", "body": "body"}


def split_counts(meta: ModelMeta, layers: int) -> tuple[dict[int, int], int]:
    with torch.device("meta"):
        model = build_split_model(phi2_config(meta.padded_vocab_size, layers), meta, torch.bfloat16)
    roles = parameter_roles(model)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    return {s: sum(numel[n] for n in trainable_names(roles, st)) for s, st in DEFAULT_STAGES.items()}, sum(numel.values())


def hook_counts(meta: ModelMeta, layers: int) -> dict[int, int]:
    """The card's approach on the resized (unsplit) model: whole matrices trainable."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(phi2_config(meta.padded_vocab_size, layers))
    sizes = {"input": model.get_input_embeddings().weight.numel(),
             "output": sum(p.numel() for p in model.get_output_embeddings().parameters())}
    sizes["body"] = sum(p.numel() for p in model.parameters()) - sizes["input"] - sizes["output"]
    return {s: sum(sizes[m] for m in {HOOK_MATRICES[r] for r in st.trainable}) for s, st in DEFAULT_STAGES.items()}


def measure(meta: ModelMeta, layers: int, stages: list[int]) -> dict[int, int]:
    """Bytes of fp32 partitions + Adam moments held by a real one-rank ZeRO-3 engine after one step."""
    import deepspeed

    from megaeeve.training.engine import freeze_for_stage, initialize_engine

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    deepspeed.init_distributed()
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}, "steps_per_print": 10**9}
    out = {}
    for s in stages:
        model = build_split_model(phi2_config(meta.padded_vocab_size, layers), meta, torch.float32)
        with torch.no_grad():  # finite random weights (build_split_model leaves them uninitialised)
            for p in model.parameters():
                p.normal_(0.0, 0.02)
        roles = parameter_roles(model)
        freeze_for_stage(model, roles, DEFAULT_STAGES[s])
        engine = initialize_engine(model, roles, stage=DEFAULT_STAGES[s], ds_config=ds, total_steps=10)
        ids = torch.randint(0, meta.vocab_size, (1, 8))
        engine.backward(engine(input_ids=ids).logits.float().mean())
        engine.step()
        opt = engine.optimizer
        total = sum(t.numel() * t.element_size() for t in opt.fp32_partitioned_groups_flat)
        total += sum(v.numel() * v.element_size() for st in opt.optimizer.state.values()
                     for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
        out[s] = total
        engine.destroy()
        del engine, model, opt
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=8705, help="new tokens (default 8,705: 59,000 in all)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--measure", type=int, nargs="*", default=[], help="stages to measure with real engines")
    args = p.parse_args()
    meta = phi2_meta(args.new_tokens)
    split, total = split_counts(meta, args.layers)
    hook = hook_counts(meta, args.layers)
    measured = measure(meta, args.layers, args.measure) if args.measure else {}
    gib = 2**30
    print(f"phi-2 shapes: vocab {meta.base_vocab_size:,} + {meta.num_added:,} new = {meta.vocab_size:,} "
          f"(padded {meta.padded_vocab_size:,}), hidden 2560, {args.layers} layers, {total:,} parameters")
    print("optimizer state + fp32 master (12 B / trainable parameter), all ranks together\n")
    head = "| stage | trains | split: trainable | split: GiB | hook: trainable | hook: GiB | hook / split |"
    if measured:
        head += " measured split GiB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for s, st in DEFAULT_STAGES.items():
        a, b = optimizer_state_bytes(split[s]), optimizer_state_bytes(hook[s])
        row = (f"| {s} | {st.description} | {split[s]:,} | {a / gib:.3f} | {hook[s]:,} | {b / gib:.3f} | "
               f"{b / a:.2f}x |")
        if measured:
            row += f" {measured[s] / gib:.3f} |" if s in measured else " |"
        print(row)


if __name__ == "__main__":
    main()
