"""The frozen-parameter check of a finished stage, recomputed from the weights on disk, independently of the
trainer's own bookkeeping: the stage's last DeepSpeed checkpoint against the stage's input. Not final/: the
hand-off copies frozen tensors from the input by construction, so it could not show one that moved. The run
report (megaeeve/report.py) prints it for every stage.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from megaeeve.model.weights import open_weights


def checkpoint_weights(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], torch.dtype]:
    """The latest ZeRO checkpoint in `ckpt_dir`, consolidated (trainable tensors: their fp32 masters; frozen ones:
    as the engine held them), and the engine's dtype from the ds_config saved with it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from megaeeve.training.checkpoint import latest_tag
    from megaeeve.training.engine import model_dtype

    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no DeepSpeed checkpoint; the frozen-parameter check reads the last one")
    states = sorted((ckpt_dir / tag).glob("*model_states.pt"))
    ds_config = torch.load(states[0], map_location="cpu", weights_only=False, mmap=True)["ds_config"]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a summary line per call
        weights = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))
    return weights, model_dtype(ds_config)


def frozen_check(src: Path, ckpt_dir: Path, roles: dict[str, str], trainable_roles: list[str]) -> dict[str, Any]:
    """A stage's last checkpoint against its input directory `src`, tensor by tensor: a frozen tensor must equal
    the input rounded to the engine's dtype (a bf16 engine holds, and saves, frozen tensors in bf16), a
    trainable one (fp32 master) must have changed. `roles` are the stage's own (a LoRA layer's base weight is
    `...base_layer.weight` in the checkpoint, its input's name without it); a tensor the stage created (a LoRA
    adapter) has no input and counts as changed once nonzero (PEFT starts lora_B at zero)."""
    from megaeeve.model.lora import file_name

    weights, dtype = checkpoint_weights(ckpt_dir)
    out = {"frozen_total": 0, "frozen_unchanged": 0, "trainable_total": 0, "trainable_changed": 0, "violations": [],
           "engine_dtype": str(dtype).removeprefix("torch.")}
    with open_weights(src) as f:
        for name, role in roles.items():
            y = weights[name]
            x = f.get_tensor(file_name(name)) if file_name(name) in f.keys() else None
            if role in trainable_roles:
                out["trainable_total"] += 1
                out["trainable_changed"] += (bool(y.any()) if x is None else
                                             not (x.shape == y.shape and torch.equal(x.float(), y.float())))
                continue
            same = x is not None and y.dtype == dtype and x.shape == y.shape and torch.equal(x.to(dtype), y)
            out["frozen_total"] += 1
            out["frozen_unchanged"] += same
            if not same:
                out["violations"].append(name)
    out["ok"] = out["frozen_unchanged"] == out["frozen_total"] and out["trainable_changed"] == out["trainable_total"]
    return out
