"""Input embedding and lm_head split into base rows (`original`) and new rows (`added`).

Freezing is per parameter, so a stage that trains only the new rows gives the base rows no gradient,
no optimizer state and no weight decay, which stays exact under ZeRO-3 sharding. Neither module ever
builds the merged [vocab, hidden] matrix in a forward pass.

Padding rows (vocab rounded up to a multiple) are not stored: the embedding returns zeros for a
padding id and the head returns -inf logits for them, so they can never be predicted. The logits
keep the padded width because transformers' loss reshapes them with `config.vocab_size`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitEmbedding(nn.Module):
    """Embedding over ids [0, base) from `original` and [base, base + added) from `added`."""

    def __init__(self, num_original: int, num_added: int, num_padding: int, hidden_size: int,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_original = num_original
        self.num_added = num_added
        self.num_padding = num_padding
        self.hidden_size = hidden_size
        self.original = nn.Parameter(torch.empty(num_original, hidden_size, dtype=dtype))
        self.added = nn.Parameter(torch.empty(num_added, hidden_size, dtype=dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Both lookups run on clamped ids and torch.where keeps the right one: no host sync, no merged
        # matrix, and a base id's vector is bitwise the base model's.
        is_original = (input_ids < self.num_original).unsqueeze(-1)
        is_added = (input_ids < self.num_original + self.num_added).unsqueeze(-1)
        from_original = F.embedding(input_ids.clamp(max=self.num_original - 1), self.original)
        from_added = F.embedding((input_ids - self.num_original).clamp(0, self.num_added - 1), self.added)
        out = torch.where(is_original, from_original, from_added)
        if self.num_padding:
            out = torch.where(is_added, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out

    def extra_repr(self) -> str:
        return (f"original={self.num_original}, added={self.num_added}, padding={self.num_padding}, "
                f"hidden={self.hidden_size}")


class SplitLMHead(nn.Module):
    """lm_head whose logits are [original rows | added rows | -inf for padding]."""

    def __init__(self, num_original: int, num_added: int, num_padding: int, hidden_size: int, bias: bool,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_original = num_original
        self.num_added = num_added
        self.num_padding = num_padding
        self.hidden_size = hidden_size
        self.original = nn.Parameter(torch.empty(num_original, hidden_size, dtype=dtype))
        self.added = nn.Parameter(torch.empty(num_added, hidden_size, dtype=dtype))
        if bias:
            self.bias_original = nn.Parameter(torch.empty(num_original, dtype=dtype))
            self.bias_added = nn.Parameter(torch.empty(num_added, dtype=dtype))
        else:
            self.bias_original = self.bias_added = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        parts = [F.linear(hidden, self.original, self.bias_original), F.linear(hidden, self.added, self.bias_added)]
        if self.num_padding:
            parts.append(hidden.new_full((*hidden.shape[:-1], self.num_padding), float("-inf")))
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return (f"original={self.num_original}, added={self.num_added}, padding={self.num_padding}, "
                f"hidden={self.hidden_size}, bias={self.bias_original is not None}")
