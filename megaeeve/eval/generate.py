"""Greedy generation: the report's samples, and generation speed in characters per second.

Speed is measured where a larger vocabulary pays off at inference: every model generates the same number
of tokens per prompt, so characters per second is characters per token times tokens per second.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def prefix_id(tokenizer) -> int:
    """The id a document starts after: bos, else eos (the separator preprocessing appends)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"tokenizer {tokenizer.name_or_path} has neither a bos nor an eos token")


@torch.no_grad()
def _greedy_one(model: nn.Module, tokenizer, prompt: str, new_tokens: int, exact: bool) -> str:
    ids = [prefix_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False).input_ids
    ids = torch.tensor([ids], device=next(model.parameters()).device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens if exact else 0, do_sample=False,
                         pad_token_id=prefix_id(tokenizer))
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


def greedy(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt (which starts a document), stopping at eos."""
    return [_greedy_one(model, tokenizer, p, max_new_tokens, exact=False) for p in prompts]


def generation_speed(model: nn.Module, tokenizer, prompts: list[str], new_tokens: int) -> float:
    """Characters of greedy continuation per second of wall time, exactly `new_tokens` tokens per prompt,
    one prompt at a time (latency, not throughput), after one untimed warm-up call."""
    _greedy_one(model, tokenizer, prompts[0], 2, exact=True)
    chars, seconds = 0, 0.0
    for prompt in prompts:
        start = time.perf_counter()
        chars += len(_greedy_one(model, tokenizer, prompt, new_tokens, exact=True))  # decode syncs the device
        seconds += time.perf_counter() - start
    return chars / seconds
