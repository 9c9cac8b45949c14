"""Each new token's base pieces, written once at extension, and the expansion of a sample into base ids.

New merges fire only after every base merge, so an expanded tokenization is the base tokenization with
runs of consecutive base tokens merged: a new token stands for exactly its pieces (`init.token_pieces`,
whose bytes are the token's bytes). Replacing every new id of a sample by its pieces therefore gives the
base model's input for the same text, with a known run of base positions per sample position: the
alignment chunk-likelihood distillation needs (megaeeve/training/objectives.py). The table is a model
directory's `new_token_pieces.json` (megaeeve/model/checkpoint.py: read_pieces).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Expansion:
    """A batch of samples [batch, n] as base ids, each sample right-padded to the batch's longest."""

    ids: torch.Tensor  # [batch, width] base ids; padding positions hold id 0
    owner: torch.Tensor  # [batch, width] the sample position whose token each base position spells; padding: n
    ends: torch.Tensor  # [batch, n] one past the last base position of each sample position's token


class PieceTable:
    """Every id of the expanded vocabulary as its base pieces (a base id is its own single piece)."""

    def __init__(self, pieces: list[list[int]], base_vocab_size: int, device: torch.device | str | None = None):
        width = max((len(ids) for ids in pieces), default=1)  # a no-expansion model has no pieces
        table = torch.zeros(base_vocab_size + len(pieces), width, dtype=torch.long)
        table[:base_vocab_size, 0] = torch.arange(base_vocab_size)
        lengths = torch.ones(len(table), dtype=torch.long)
        for k, ids in enumerate(pieces):
            table[base_vocab_size + k, :len(ids)] = torch.tensor(ids)
            lengths[base_vocab_size + k] = len(ids)
        self.table, self.lengths = table.to(device), lengths.to(device)

    def to(self, device: torch.device | str) -> PieceTable:
        """The same table on `device`."""
        moved = PieceTable.__new__(PieceTable)
        moved.table, moved.lengths = self.table.to(device), self.lengths.to(device)
        return moved

    def expand(self, tokens: torch.Tensor) -> Expansion:
        """Samples [batch, n] as base ids. Right padding leaves every real position's causal context alone."""
        batch, n = tokens.shape
        lengths = self.lengths[tokens]
        ends = lengths.cumsum(1)
        slot = torch.arange(self.table.shape[1], device=tokens.device)
        real = slot < lengths.unsqueeze(-1)  # [batch, n, slots]
        where = (ends - lengths).unsqueeze(-1) + slot
        row = torch.arange(batch, device=tokens.device)[:, None, None].expand_as(where)[real]
        col = where[real]
        width = int(ends[:, -1].max())
        ids = tokens.new_zeros(batch, width)
        ids[row, col] = self.table[tokens][real]
        owner = torch.full_like(ids, n)
        owner[row, col] = torch.arange(n, device=tokens.device)[None, :, None].expand_as(where)[real]
        return Expansion(ids, owner, ends)
