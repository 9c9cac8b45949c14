"""Greedy generation: the report's samples, and generation speed in characters per second.

A plain loop over the model's KV cache rather than `generate`: the softmax is limited to the tokenizer's ids
(an export's padding columns have logit 0; see score.py), and on a small model `generate`'s per-step logits
processors cost more than the forward pass, so they, not the model, would set the measured speed.

Speed is measured where a larger vocabulary pays off at inference: every model generates the same number
of tokens per prompt, so characters per second is characters per token times tokens per second.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from megaeeve.errors import EvalError


def prefix_id(tokenizer) -> int:
    """The id a document starts after: bos, else eos (the separator preprocessing appends)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise EvalError(f"tokenizer {tokenizer.name_or_path} has neither a bos nor an eos token")


@torch.no_grad()
def _greedy_one(model: nn.Module, tokenizer, prompt: str, new_tokens: int, stop_at_eos: bool) -> str:
    """The continuation of `prompt` (which starts a document): `new_tokens` argmax steps, or fewer at eos."""
    device = next(model.parameters()).device
    ids = torch.tensor([[prefix_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False).input_ids],
                       device=device)
    cache, out = None, []
    for _ in range(new_tokens):
        step = model(input_ids=ids, cache=cache, use_cache=True)
        cache = step.cache
        next_id = int(step.logits[0, -1, :len(tokenizer)].argmax())  # syncs the device every step
        if stop_at_eos and next_id == tokenizer.eos_token_id:
            break
        out.append(next_id)
        ids = torch.tensor([[next_id]], device=device)
    return tokenizer.decode(out, skip_special_tokens=True)


def greedy(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt, stopping at eos."""
    return [_greedy_one(model, tokenizer, p, max_new_tokens, stop_at_eos=True) for p in prompts]


def generation_speed(model: nn.Module, tokenizer, prompts: list[str], new_tokens: int) -> float:
    """Characters of greedy continuation per second of wall time, exactly `new_tokens` tokens per prompt,
    one prompt at a time (latency, not throughput), after one untimed warm-up call."""
    _greedy_one(model, tokenizer, prompts[0], 2, stop_at_eos=False)
    chars, seconds = 0, 0.0
    for prompt in prompts:
        start = time.perf_counter()
        chars += len(_greedy_one(model, tokenizer, prompt, new_tokens, stop_at_eos=False))
        seconds += time.perf_counter() - start
    return chars / seconds
