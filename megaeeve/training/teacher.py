"""The frozen teacher of a distilling stage: the base model, read from the run's stage-0 directory.

Extension copies the base model's rows into the `original` blocks and keeps its body (tied embeddings are
untied copies), so the stage-0 model over base ids is the base model: its logits over base ids equal the
base model's. It loads in the run's dtype like the student. Under ZeRO-3 it is partitioned over the same
ranks (1/world of it each) and runs in a DeepSpeed engine built without an optimizer (ZeRO-Inference:
DeepSpeed's hooks gather each module's parameters for its forward and release them after), so it has no
gradients, no optimizer state and no checkpoint; a resumed stage rebuilds it from the same directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megaeeve.model.checkpoint import ModelMeta, is_zero3, load_split_model


def load_teacher(model_dir: Path, meta: ModelMeta, *, ds_config: dict, dtype: torch.dtype, attn_implementation: str,
                 device: torch.device) -> Any:
    """The frozen model of `model_dir` (whose metadata is `meta`), in eval mode: an inference engine under ZeRO-3,
    else a module on `device`."""
    model = load_split_model(model_dir, meta, ds_config=ds_config, dtype=dtype,
                             attn_implementation=attn_implementation).requires_grad_(False)
    if not is_zero3(ds_config):
        return model.to(device)
    import deepspeed

    config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine
