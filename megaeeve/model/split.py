"""Input embedding and lm_head split into base rows (`original`) and new rows (`added`).

Freezing is per parameter, so a stage that trains only the new rows gives the base rows no gradient,
no optimizer state and no weight decay, which stays exact under ZeRO-3 sharding. Neither module ever
builds the merged [vocab, hidden] matrix in a forward pass; the head writes both blocks' logits into
one buffer (no torch.cat copy).

A model without new tokens (num_added = 0: the base vocabulary trained as it is, e.g. a no-expansion
baseline) has no `added` parameter at all (None), so no stage can name a new-row role for it.

Padding rows (vocab rounded up to a multiple) are not stored: the embedding returns zeros for a
padding id and the head returns -inf logits for them, so they can never be predicted. The logits
keep the padded width because transformers' loss reshapes them with `config.vocab_size`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _split_rows(module: nn.Module, num_original: int, num_added: int, num_padding: int, hidden_size: int,
                dtype: torch.dtype | None) -> None:
    """The layout both split modules share: base rows `original`, new rows `added`; padding rows are
    not stored, so nothing can train them."""
    module.num_original = num_original
    module.num_added = num_added
    module.num_padding = num_padding
    module.hidden_size = hidden_size
    module.original = nn.Parameter(torch.empty(num_original, hidden_size, dtype=dtype))
    if num_added:
        module.added = nn.Parameter(torch.empty(num_added, hidden_size, dtype=dtype))
    else:
        module.register_parameter("added", None)


class SplitEmbedding(nn.Module):
    """Embedding over ids [0, base) from `original` and [base, base + added) from `added`.

    `scale` multiplies every row as the replaced module did (Gemma's sqrt(hidden); None: no factor), so the
    rows stay the base model's raw weights and the export is the plain model's embedding again.
    """

    def __init__(self, num_original: int, num_added: int, num_padding: int, hidden_size: int,
                 dtype: torch.dtype | None = None, scale: float | None = None) -> None:
        super().__init__()
        _split_rows(self, num_original, num_added, num_padding, hidden_size, dtype)
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Both lookups run on clamped ids and torch.where keeps the right one: no host sync, no merged
        # matrix, and a base id's vector is bitwise the base model's.
        is_original = (input_ids < self.num_original).unsqueeze(-1)
        is_added = (input_ids < self.num_original + self.num_added).unsqueeze(-1)
        out = F.embedding(input_ids.clamp(max=self.num_original - 1), self.original)
        if self.added is not None:
            from_added = F.embedding((input_ids - self.num_original).clamp(0, self.num_added - 1), self.added)
            out = torch.where(is_original, out, from_added)
        if self.num_padding:
            out = torch.where(is_added, out, torch.zeros((), dtype=out.dtype, device=out.device))
        if self.scale is not None:  # as transformers does: times a 0-d tensor of the weights' dtype
            out = out * torch.tensor(self.scale, dtype=out.dtype, device=out.device)
        return out

    def extra_repr(self) -> str:
        return (f"original={self.num_original}, added={self.num_added}, padding={self.num_padding}, "
                f"hidden={self.hidden_size}, scale={self.scale}")


def _affine_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if bias is None:
        torch.mm(hidden, weight.t(), out=out)
    else:
        torch.addmm(bias, hidden, weight.t(), out=out)


class _SplitLinear(torch.autograd.Function):
    """Logits of both row blocks written straight into column slices of one padded [tokens, vocab] buffer.

    Separate outputs joined by torch.cat would cost a copy of the logits, and a GEMM whose output has an
    odd leading dimension (50,295 for phi-2) runs ~1.6x slower on CPU BLAS; the slices keep the padded,
    aligned leading dimension of the whole buffer.
    """

    @staticmethod
    def forward(ctx, hidden, original, added, bias_original, bias_added, num_padding: int):
        flat = hidden.reshape(-1, hidden.shape[-1])
        n_orig, n_added = original.shape[0], 0 if added is None else added.shape[0]
        out = flat.new_empty(flat.shape[0], n_orig + n_added + num_padding)
        _affine_into(out[:, :n_orig], flat, original, bias_original)
        if added is not None:
            _affine_into(out[:, n_orig:n_orig + n_added], flat, added, bias_added)
        out[:, n_orig + n_added:].fill_(float("-inf"))
        ctx.save_for_backward(flat, original, added)
        ctx.hidden_shape = hidden.shape
        return out.view(*hidden.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat, original, added = ctx.saved_tensors
        n_orig, n_added = original.shape[0], 0 if added is None else added.shape[0]
        grad = grad.reshape(-1, grad.shape[-1])
        g_orig, g_added = grad[:, :n_orig], grad[:, n_orig:n_orig + n_added]
        need = ctx.needs_input_grad
        grad_hidden = None
        if need[0]:
            grad_hidden = torch.mm(g_orig, original)
            if added is not None:
                grad_hidden.addmm_(g_added, added)
            grad_hidden = grad_hidden.view(ctx.hidden_shape)
        return (grad_hidden,
                g_orig.t().mm(flat) if need[1] else None,
                g_added.t().mm(flat) if need[2] else None,
                g_orig.sum(0) if need[3] else None,
                g_added.sum(0) if need[4] else None,
                None)


class SplitLMHead(nn.Module):
    """lm_head whose logits are [original rows | added rows | -inf for padding]."""

    def __init__(self, num_original: int, num_added: int, num_padding: int, hidden_size: int, bias: bool,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        _split_rows(self, num_original, num_added, num_padding, hidden_size, dtype)
        if bias:
            self.bias_original = nn.Parameter(torch.empty(num_original, dtype=dtype))
            self.bias_added = nn.Parameter(torch.empty(num_added, dtype=dtype)) if num_added else None
        else:
            self.bias_original = self.bias_added = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        added = self.added
        if getattr(self, "map_b", None) is not None:  # a stage's shared map (output_map.py): row_t + x_t A B^T
            added = added + (self.map_features.to(added.dtype) @ self.map_a) @ self.map_b.T
        return _SplitLinear.apply(hidden, self.original, added, self.bias_original, self.bias_added,
                                  self.num_padding)

    def extra_repr(self) -> str:
        return (f"original={self.num_original}, added={self.num_added}, padding={self.num_padding}, "
                f"hidden={self.hidden_size}, bias={self.bias_original is not None}")
