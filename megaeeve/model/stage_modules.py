"""The parameters a stage adds to the model before training it: LoRA adapters (stage setting `lora`) and the
shared map of the new output rows (`output_map`).

One builder for the stage's engine (megaeeve/training/stage.py) and for the plan's model on the meta device
(megaeeve/training/plan.py): the plan's parameter roles and memory estimate are those of the model the stage
trains only while both add the same modules.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from megaeeve.stages import Stage


def add_stage_modules(model: nn.Module, stage: Stage, src_dir: Path | None) -> None:
    """Add `stage`'s LoRA adapters and output map to `model`. `src_dir`: the stage's input model, whose new input
    rows the output map reads; None builds the map's buffers as placeholders (a model on the meta device)."""
    from megaeeve.model.lora import add_lora
    from megaeeve.model.output_map import add_output_map, input_features

    if stage.lora is not None:
        add_lora(model, stage.lora)
    if stage.output_map is not None:
        add_output_map(model, stage.output_map, None if src_dir is None else input_features(src_dir))
