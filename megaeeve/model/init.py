"""Initialisation of the new rows: EEVE's (the default) and two baselines to compare it with.

- eeve: a new token's input row is the mean of the base input rows of the pieces the base tokenizer splits
  the token's text into; its output row (and lm_head bias) is the base output row of the first piece.
- mean: every new row is the mean of all base rows plus normal noise of std 1/sqrt(hidden) (LLaMA-Factory's
  noisy mean); a new bias entry is the mean base bias.
- fit: eeve's rows, then fitted to the base model (fit.py: output prior, input and output rows).
- random: normal rows of std config.initializer_range, zero bias (transformers' resize_token_embeddings
  without mean_resizing).

The baselines draw their noise from a fixed seed, so the same inputs give the same stage-0 directory.

The "text" of a token: a token of the expanded tokenizer's model vocabulary is a string in the same
alphabet as the base vocabulary (byte-level "Ġì..." or metaspace "▁..."), so the base model
(`Tokenizer.model.tokenize`) splits exactly its bytes, including a token holding part of a UTF-8
character (which decodes to U+FFFD) or a word-internal metaspace token (which decode + encode would
prefix with "▁"). An added token holds plain text: it is encoded with the base tokenizer, without
special tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from megaeeve.errors import InitError

INIT_METHODS = ("fit", "eeve", "mean", "random")
SEED = 0


def token_pieces(base: Tokenizer, expanded: Tokenizer, new_ids: range) -> list[list[int]]:
    """For each new id, the base ids of its text's pieces (never empty)."""
    added = expanded.get_added_tokens_decoder()
    base_size = base.get_vocab_size(with_added_tokens=True)
    pieces = []
    for i in new_ids:
        if i in added:
            text = added[i].content
            ids = base.encode(text, add_special_tokens=False).ids
        else:
            text = expanded.id_to_token(i)
            ids = [t.id for t in base.model.tokenize(text)]
        if not ids or max(ids) >= base_size:
            raise InitError(f"new token id {i} ({text!r}): the base tokenizer gives pieces {ids}, "
                            f"need at least one base id < {base_size}")
        pieces.append(ids)
    return pieces


def eeve_rows(base_input: torch.Tensor, base_output: torch.Tensor, base_bias: torch.Tensor | None,
              pieces: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(added input rows, added output rows, added bias or None), computed in fp32."""
    flat = torch.tensor([i for ids in pieces for i in ids], dtype=torch.long)
    offsets = torch.tensor([0] + [len(ids) for ids in pieces[:-1]], dtype=torch.long).cumsum(0)
    first = torch.tensor([ids[0] for ids in pieces], dtype=torch.long)
    added_input = F.embedding_bag(flat, base_input.float(), offsets, mode="mean")
    added_output = base_output.float()[first]
    added_bias = None if base_bias is None else base_bias.float()[first]
    return added_input, added_output, added_bias


def _normal(rows: int, cols: int, std: float) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(SEED)) * std


def mean_rows(base_input: torch.Tensor, base_output: torch.Tensor, base_bias: torch.Tensor | None,
              num_new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """LLaMA-Factory's noisy mean over the base rows given (pass only the tokenizer's rows, not padding)."""
    hidden = base_input.shape[1]
    noise = _normal(2 * num_new, hidden, 1 / math.sqrt(hidden))
    added_input = base_input.float().mean(0) + noise[:num_new]
    added_output = base_output.float().mean(0) + noise[num_new:]
    added_bias = None if base_bias is None else base_bias.float().mean().expand(num_new).clone()
    return added_input, added_output, added_bias


def random_rows(num_new: int, hidden: int, std: float,
                bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """transformers' default for resized embeddings: N(0, initializer_range) rows, zero bias."""
    rows = _normal(2 * num_new, hidden, std)
    return rows[:num_new].clone(), rows[num_new:].clone(), torch.zeros(num_new) if bias else None
