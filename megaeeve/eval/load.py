"""Load whatever a run produces or starts from, for evaluation: one entry point for every model kind."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from megaeeve.model.checkpoint import META_FILE, load_model_dir
from megaeeve.model.extend import load_base_model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_any_model(path: str | Path, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> nn.Module:
    """A base Hugging Face directory or .gguf file, a megaeeve model directory (stage-0, stage-N/final) or an
    export (tools/export_hf.py), in eval mode on `device` (default: the accelerator when there is one).

    A megaeeve directory is recognised by its megaeeve_model.json and loads with its split embeddings, whose
    padding ids get -inf logits; everything else goes through AutoModelForCausalLM.
    """
    path = Path(path)
    model = load_model_dir(path, dtype=dtype) if (path / META_FILE).is_file() else load_base_model(path).to(dtype)
    return model.to(device or default_device()).eval()
