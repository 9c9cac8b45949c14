"""Evaluate one model on named texts: bits per character and per byte, compression, generation speed.

Bits per character compare models whose tokenizers differ (the base vs the expanded model): the sum of a
document's token NLLs in bits, divided by its characters (or UTF-8 bytes), summed over the documents.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from megaeeve.errors import EvalError
from megaeeve.eval.generate import generation_speed, prefix_id
from megaeeve.eval.score import sequence_nll


@dataclass(frozen=True)
class EvalSettings:
    context: int | None = None
    """Tokens a window holds; None: the model's max_position_embeddings."""
    stride: int | None = None
    """Tokens each later window moves on; None: half the context."""
    batch_tokens: int = 2048
    """Padded tokens per forward pass (the logits take batch_tokens x vocabulary floats)."""
    gen_prompts: int = 3
    """Generation speed: the first documents of each text give the prompts, ..."""
    gen_prompt_chars: int = 48
    """... their first characters."""
    gen_tokens: int = 32
    """Tokens generated per prompt; 0 skips the speed measurement."""


@dataclass(frozen=True)
class TextEval:
    """One text's numbers (tokens: the documents' own, without the leading bos/eos)."""

    bits_per_char: float
    bits_per_byte: float
    chars_per_token: float
    documents: int
    characters: int
    tokens: int
    gen_chars_per_s: float | None


def context_length(model: nn.Module, settings: EvalSettings) -> int:
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    context = settings.context or limit
    if context is None:
        raise EvalError("the model config has no max_position_embeddings: give the context length")
    if context < 2:
        raise EvalError(f"context {context}: a window needs at least 2 tokens")
    if limit is not None and context > limit:
        raise EvalError(f"context {context} exceeds the model's max_position_embeddings {limit}")
    return context


def evaluate_model(model: nn.Module, tokenizer, texts: dict[str, list[str]],
                   settings: EvalSettings = EvalSettings()) -> dict[str, TextEval]:
    """Score every text's documents with `model` (on its device) and `tokenizer` (a transformers tokenizer)."""
    vocab_size = len(tokenizer)
    rows = model.config.get_text_config().vocab_size
    if vocab_size > rows:
        raise EvalError(f"the tokenizer has {vocab_size} tokens but the model only {rows} rows: they do not belong "
                        f"together")
    context = context_length(model, settings)
    stride = settings.stride or context // 2
    results = {}
    for name, docs in texts.items():
        encoded = tokenizer(docs, add_special_tokens=False, verbose=False).input_ids
        nll = sum(sequence_nll(model, [[prefix_id(tokenizer)] + ids for ids in encoded], vocab_size=vocab_size,
                               context=context, stride=stride, batch_tokens=settings.batch_tokens,
                               desc=f"scoring {name}"))
        bits, chars = nll / math.log(2), sum(len(d) for d in docs)
        tokens = sum(len(ids) for ids in encoded)
        speed = None
        if settings.gen_tokens:
            prompts = [d[:settings.gen_prompt_chars] for d in docs[:settings.gen_prompts]]
            speed = generation_speed(model, tokenizer, prompts, settings.gen_tokens)
        results[name] = TextEval(bits_per_char=bits / chars, bits_per_byte=bits / sum(len(d.encode()) for d in docs),
                                 chars_per_token=chars / tokens, documents=len(docs), characters=chars,
                                 tokens=tokens, gen_chars_per_s=speed)
    return results


def results_json(model: str, results: dict[str, TextEval]) -> dict[str, Any]:
    """The JSON tools/evaluate.py --output writes: {"model": ..., "texts": {NAME: {...}}}."""
    return {"model": model, "texts": {name: dataclasses.asdict(r) for name, r in results.items()}}


def format_table(results: dict[str, TextEval]) -> str:
    header = ("text", "bits/char", "bits/byte", "chars/token", "documents", "characters", "tokens", "gen chars/s")
    rows = [(name, f"{r.bits_per_char:.4f}", f"{r.bits_per_byte:.4f}", f"{r.chars_per_token:.3f}", f"{r.documents:,}",
             f"{r.characters:,}", f"{r.tokens:,}", "-" if r.gen_chars_per_s is None else f"{r.gen_chars_per_s:.1f}")
            for name, r in results.items()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in (header, *rows))
