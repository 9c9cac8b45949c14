"""Step time of the split embedding + lm_head against an unsplit model of the same shape.

Both models share the same weights; all parameters are trainable (the heaviest case for the split:
both `original` and `added` need gradients). Steps alternate between the two models; medians and minima
are reported, so drift on a shared machine hits both alike. Target: ratio <= 1.03.

    python bench/bench_split_embedding.py                    # CPU
    python bench/bench_split_embedding.py --device cuda --dtype bfloat16 --hidden 2560 --layers 8
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import processor  # noqa: E402
from megaeeve.model.split import SplitEmbedding, SplitLMHead  # noqa: E402


def split_copy(model, base_vocab: int, vocab: int):
    """`model` with its embedding and lm_head split at `base_vocab` (rows past `vocab` are padding)."""
    split = copy.deepcopy(model)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    hidden, padded = emb.shape[1], emb.shape[0]
    sizes = (base_vocab, vocab - base_vocab, padded - vocab, hidden)
    new_emb = SplitEmbedding(*sizes, dtype=emb.dtype).to(emb.device)
    new_head = SplitLMHead(*sizes, bias=head.bias is not None, dtype=emb.dtype).to(emb.device)
    with torch.no_grad():
        for module, weight, bias in ((new_emb, emb, None), (new_head, head.weight, head.bias)):
            module.original.copy_(weight[:base_vocab])
            module.added.copy_(weight[base_vocab:vocab])
            if bias is not None:
                module.bias_original.copy_(bias[:base_vocab])
                module.bias_added.copy_(bias[base_vocab:vocab])
    split.set_input_embeddings(new_emb)
    split.set_output_embeddings(new_head)
    return split


def step(model, ids: torch.Tensor) -> None:
    logits = model(ids).logits
    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)


def head_step(model, ids: torch.Tensor, hidden_states: torch.Tensor) -> None:
    """Embedding lookup + lm_head alone (forward + backward): the part the split changes."""
    x = model.get_input_embeddings()(ids) + hidden_states
    logits = model.get_output_embeddings()(x)
    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)


def timed(fn, device: str, clock) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def compare(fns: dict, steps: int, warmup: int, device: str, clock) -> dict[str, list[float]]:
    """Seconds per call of each function, calls alternating between them."""
    times = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            t = timed(fn, device, clock)
            if i >= warmup:
                times[name].append(t)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--base-vocab", type=int, default=50295, help="phi-2's tokenizer size")
    parser.add_argument("--added", type=int, default=8640, help="new tokens (EEVE-2.8B: 58,944 padded)")
    parser.add_argument("--pad-to", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier than wall time on a shared machine (use with --threads 1)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.device == "cuda":
        parser.error("--clock cpu measures CPU work only; use wall time on cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import PhiConfig, PhiForCausalLM

    dtype = getattr(torch, args.dtype)
    vocab = args.base_vocab + args.added
    padded = -(-vocab // args.pad_to) * args.pad_to
    torch.manual_seed(0)
    config = PhiConfig(vocab_size=padded, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 128),
                       max_position_embeddings=args.seq, tie_word_embeddings=False)
    unsplit = PhiForCausalLM(config).to(device=args.device, dtype=dtype).train()
    split = split_copy(unsplit, args.base_vocab, vocab)
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=args.device)
    hidden_states = torch.randn(args.batch, args.seq, args.hidden, device=args.device, dtype=dtype)

    rows = []
    full = compare({"unsplit": lambda: step(unsplit, ids), "split": lambda: step(split, ids)},
                   args.steps, args.warmup, args.device, clock)
    rows.append(("model step (fwd+bwd)", full))
    parts = compare({"unsplit": lambda: head_step(unsplit, ids, hidden_states),
                     "split": lambda: head_step(split, ids, hidden_states)}, args.steps, args.warmup, args.device,
                    clock)
    rows.append(("embedding + lm_head only (fwd+bwd)", parts))

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{processor()}, {torch.get_num_threads()} threads"
    print(f"device: {device}; torch {torch.__version__}; dtype {args.dtype}")
    print(f"Phi: hidden {args.hidden}, {args.layers} layers, vocab {args.base_vocab} + {args.added} -> {padded}; "
          f"batch {args.batch} x {args.seq} tokens; {args.steps} alternating steps ({args.clock} clock), "
          "all params trainable")
    print()
    print("| what | unsplit ms (median) | split ms (median) | ratio of medians | ratio of minima |")
    print("|---|---:|---:|---:|---:|")
    for name, t in rows:
        (mu, ms), (lu, ls) = (statistics.median(t["unsplit"]), statistics.median(t["split"])), (min(t["unsplit"]), min(t["split"]))
        print(f"| {name} | {mu * 1e3:.1f} | {ms * 1e3:.1f} | {ms / mu:.3f} | {ls / lu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
