"""A stage's shared map of the new output rows (stage setting `output_map`, role `output_map`).

The lm_head's new rows become row_t + x_t A B^T inside the forward: x_t is the new input row of t in the stage's
input, at unit norm (fixed for the stage, a buffer that is never saved: a resumed stage rebuilds it from the same
input), A and B are [hidden, rank] parameters of the head, A seeded random and B zero, so the stage starts from
its input exactly. They are ordinary parameters that ZeRO-3 partitions at `deepspeed.initialize`, like LoRA's.
At the hand-off the map is folded into the rows (`folded_rows`): the next stage and the export see plain rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from megaeeve.model.split import SplitLMHead
from megaeeve.model.weights import open_weights
from megaeeve.stages import OutputMapSpec

PARAMS = ("map_a", "map_b")
FEATURES = "map_features"


def output_head(model: nn.Module) -> tuple[str, SplitLMHead]:
    """The split lm_head and its module path."""
    for prefix, module in model.named_modules():
        if isinstance(module, SplitLMHead):
            return prefix, module
    raise ValueError("model has no split lm_head; load it with load_model_dir")


def features_of(input_rows: torch.Tensor) -> torch.Tensor:
    """x_t: each new input row at unit norm, in fp32 (as fit_output_rows' map reads them)."""
    rows = input_rows.float()
    return rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-12)


def input_features(src_dir: Path) -> torch.Tensor:
    """x_t of every new token from the model directory a stage starts from."""
    from megaeeve.model.checkpoint import read_model_meta

    with open_weights(src_dir) as f:
        return features_of(f.get_tensor(f"{read_model_meta(src_dir).input_embedding}.added"))


def add_output_map(model: nn.Module, spec: OutputMapSpec, features: torch.Tensor | None) -> None:
    """Give the model's split lm_head the map of `spec` over `features` ([new tokens, hidden]: input_features of
    the stage's input; None: placeholders on the meta device, for a plan's model on the meta device)."""
    _, head = output_head(model)
    if not head.num_added:
        raise ValueError("output_map: the model has no new tokens, so no new output rows to map")
    hidden = head.hidden_size
    if features is None:
        features = torch.empty(head.num_added, hidden, device="meta")
    if tuple(features.shape) != (head.num_added, hidden):
        raise ValueError(f"output_map: features of shape {tuple(features.shape)} for {head.num_added} new rows of "
                         f"width {hidden}")
    gen = torch.Generator().manual_seed(0)  # every rank the same A: ZeRO-3 partitions each rank's copy
    a = torch.randn(hidden, spec.rank, generator=gen) / math.sqrt(hidden)
    head.map_a = nn.Parameter(a.to(features.device, head.added.dtype))
    head.map_b = nn.Parameter(torch.zeros(hidden, spec.rank, dtype=head.added.dtype, device=features.device))
    head.register_buffer(FEATURES, features, persistent=False)


def mapped(model: nn.Module) -> tuple[str, SplitLMHead] | None:
    """The lm_head's module path and the head, where a stage added a map to it; None otherwise."""
    prefix, head = output_head(model)
    return (prefix, head) if getattr(head, "map_b", None) is not None else None


def folded_rows(features: torch.Tensor, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """rows + x A B^T in fp32: what the head's forward computed, as plain rows for the hand-off."""
    return (rows.float() + features.float() @ a.float() @ b.float().T).contiguous()

