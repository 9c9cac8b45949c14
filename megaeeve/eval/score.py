"""Negative log-likelihood of whole documents, batched, with sliding windows past the context length.

A document is scored as [bos, else eos] + its tokens, every one of its tokens predicted: the leading
special token gives the first token a context, as the document separator does in training. A sequence
longer than the context is cut into windows of `context` tokens; the first scores all its tokens, each
later one moves `stride` tokens on and scores only those, so every token is scored once and, after the
first window, with at least context - stride tokens before it.

Only ids below the tokenizer's length enter the softmax: a split model gives its padding ids -inf
logits, an export gives them 0 (plain transformers cannot mask them), and a base model's own padding
rows are no tokens either; masking all three makes an export and its split directory score the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from megaeeve.progress import Progress


@dataclass(frozen=True)
class Window:
    """A slice of one document's sequence: `ids[first:]` are scored, each from the ids before it."""

    doc: int
    ids: list[int]
    first: int
    start: int  # where `ids` begins in the document's sequence


def windows(doc: int, ids: list[int], context: int, stride: int) -> list[Window]:
    """The windows that score ids[1:] of one sequence exactly once (see the module docstring)."""
    if not 0 < stride < context:
        raise ValueError(f"stride must be in [1, context - 1], got stride {stride}, context {context}")
    end = min(context, len(ids))
    out = [Window(doc, ids[:end], 1, 0)]
    while end < len(ids):
        done, end = end, min(end + stride, len(ids))
        out.append(Window(doc, ids[end - context:end], done - (end - context), end - context))
    return out


def _batches(items: list[Window], batch_tokens: int) -> list[list[Window]]:
    """Longest first, as many windows per batch as fit `batch_tokens` padded tokens (at least one)."""
    batches: list[list[Window]] = []
    for w in sorted(items, key=lambda w: -len(w.ids)):
        if batches and (len(batches[-1]) + 1) * len(batches[-1][0].ids) <= batch_tokens:
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches


@torch.no_grad()
def sequence_nll(model: nn.Module, sequences: list[list[int]], *, vocab_size: int, context: int, stride: int,
                 batch_tokens: int, desc: str | None = None) -> list[float]:
    """Summed NLL in nats of sequence[1:] for each sequence (the first id is the context-giving prefix).

    The softmax runs over ids [0, vocab_size) only; right padding is masked out of attention. With `desc`,
    progress (windows/s, tokens/s, ETA) is shown under that name: a base model reading a script its tokenizer
    splits into bytes scores several times the expanded model's tokens.
    """
    device = next(model.parameters()).device
    items = [w for i, ids in enumerate(sequences) for w in windows(i, ids, context, stride)]
    totals = torch.zeros(len(sequences), dtype=torch.float64)
    batches = _batches(items, batch_tokens)
    progress = Progress(desc or "", len(batches), enabled=desc is not None, unit="windows")
    for batch in batches:
        width = len(batch[0].ids)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        scored = torch.zeros(len(batch), width, dtype=torch.bool)  # positions whose next token is scored
        docs = torch.zeros_like(ids)
        for row, w in enumerate(batch):
            ids[row, :len(w.ids)] = torch.tensor(w.ids)
            attention[row, :len(w.ids)] = 1
            scored[row, w.first - 1:len(w.ids) - 1] = True
            docs[row] = w.doc
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
        logits = logits[..., :vocab_size].float()
        targets = ids.roll(-1, dims=1).to(device).unsqueeze(-1)
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets).squeeze(-1)
        totals.index_add_(0, docs[scored], nll[scored.to(device)].double().cpu())
        progress.update(len(batch), int(scored.sum()))
        progress.part_done()
    progress.close()
    return totals.tolist()
