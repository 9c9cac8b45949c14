"""The stage plan: what one stage trains, where and how, read and checked once before any engine exists.

`plan_stage` reads the stage from the run config, checks the ds_config once (and fills in its batch sizes for
this world), reads each model directory's megaeeve_model.json once (the stage's input, and the run's stage-0
model when that is another directory), and builds the stage's model once on the meta device for its parameter
roles and trainable set. Engine construction, the loop, checkpoints and the hand-off, metrics and the objective
then take what they need from the frozen `StagePlan`, as torchtitan hands its ParallelDims and JobConfig into
its builders. Rank and world come from the launcher's environment (RANK / WORLD_SIZE, which train.py's
launch_env fills in): torch.distributed starts from the same values, and a bad stage is refused before any
process group exists.

`stage_plans` is the lighter summary of stages on the meta device (trainable parameters by role, optimizer
state) that --dry-run and the run report print.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from megaeeve.errors import ConfigError, StageError
from megaeeve.model import ModelMeta, parameter_roles, read_model_meta
from megaeeve.stages import Stage, trainable_names
from megaeeve.training.checkpoint import DONE, check_predecessor
from megaeeve.training.config import BatchShape, RunConfig, batch_shape
from megaeeve.training.engine import check_ds_config, model_dtype, optimizer_state_bytes

MIN_STEPS = 100


def read_ds_config(path: Path) -> dict:
    """A ds_config JSON file; a missing or malformed one is a ConfigError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"ds_config {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None


def total_steps(stage: Stage, batch: BatchShape, seq_length: int) -> int:
    """The stage's budget in optimizer steps (a token budget rounds up to whole steps)."""
    if stage.tokens:
        return math.ceil(stage.tokens / (batch.global_batch * seq_length))
    return int(stage.steps)


def budget_warnings(stage: Stage, batch: BatchShape, seq_length: int) -> list[str]:
    """A budget too short for its schedule: a token budget at a large global batch can be a handful of steps
    (64 nodes x 8 GPUs x micro 4 x accumulation 8 x 2048 tokens = 33.5M tokens a step)."""
    steps = total_steps(stage, batch, seq_length)
    tokens_per_step = batch.global_batch * seq_length
    warnings = []
    if steps < MIN_STEPS:
        warnings.append(f"stage {stage.number}: {steps} optimizer step(s) at {batch.world} rank(s) "
                        f"({tokens_per_step:,} tokens a step); fewer than {MIN_STEPS} leave the warmup + cosine "
                        f"schedule little room: raise the budget or lower the batch")
    if stage.warmup_ratio > 0 and round(stage.warmup_ratio * steps) == 0:
        warnings.append(f"stage {stage.number}: warmup_ratio {stage.warmup_ratio:g} of {steps} step(s) rounds to no "
                        f"warmup step")
    return warnings


def meta_model(model_dir: Path, ds_config: dict | None = None, meta: ModelMeta | None = None) -> torch.nn.Module:
    """The split model of a model directory on the meta device: shapes and names, no weights read. `meta` is the
    directory's megaeeve_model.json when the caller has read it already (a stage plan reads it once)."""
    from transformers import AutoConfig

    from megaeeve.model.checkpoint import build_split_model

    meta = meta or read_model_meta(model_dir)
    with torch.device("meta"):
        return build_split_model(AutoConfig.from_pretrained(str(model_dir)), meta, model_dtype(ds_config or {}))


def meta_stage_model(model_dir: Path, stage: Stage, ds_config: dict | None = None, meta: ModelMeta | None = None
                     ) -> tuple[torch.nn.Module, dict[str, str]]:
    """The split model on the meta device as `stage` builds it (its LoRA adapters and output map added), and its
    parameter roles: a LoRA stage's names carry `.base_layer.` and its adapters are parameters of their own."""
    from megaeeve.model.stage_modules import add_stage_modules

    model = meta_model(model_dir, ds_config, meta)
    add_stage_modules(model, stage, None)
    return model, parameter_roles(model)


def stage_plans(model_dir: Path, stages: list[Stage], ds_config: dict | None = None) -> list[dict]:
    """Per stage: trainable tensors by role with counts, and optimizer-state bytes (for --dry-run and reports)."""
    meta = read_model_meta(model_dir)
    plans = []
    for stage in stages:
        model, roles = meta_stage_model(model_dir, stage, ds_config, meta)
        numel = {n: p.numel() for n, p in model.named_parameters()}
        total = sum(numel.values())
        names = trainable_names(roles, stage)
        n = sum(numel[x] for x in names)
        plans.append({
            "stage": stage.number, "description": stage.description, "total": total, "trainable": n,
            "optimizer_bytes": optimizer_state_bytes(n),
            "roles": {role: [(x, tuple(model.get_parameter(x).shape)) for x in names if roles[x] == role]
                      for role in stage.trainable},
            "role_numel": {role: sum(numel[x] for x in names if roles[x] == role) for role in stage.trainable},
        })
    return plans


@dataclass(frozen=True)
class StagePlan:
    """One stage of one run on one rank, everything checked: what the trainer's builders take their inputs from."""

    cfg: RunConfig
    stage: Stage
    ds_config: dict[str, Any]  # checked; gradient_accumulation_steps and train_batch_size filled in for this world
    ds_path: Path
    rank: int
    world: int
    device: torch.device  # where DeepSpeed puts this rank's engine: the accelerator's device of LOCAL_RANK
    dtype: torch.dtype  # the engine's (the ds_config's bf16 / fp16 / fp32)
    batch: BatchShape
    steps: int  # the budget in optimizer steps
    src_dir: Path  # the weights the stage starts from: its predecessor's final/, or the run's stage-0 model
    meta: ModelMeta  # src_dir's megaeeve_model.json
    run_meta: ModelMeta  # the run's stage-0 model's (a distilling stage's teacher); `meta` when src_dir is that model
    roles: Mapping[str, str]  # every parameter, as the stage builds the model (LoRA adapters added) -> its role
    trainable: tuple[str, ...]  # the parameters the stage trains, in the model's order
    warnings: tuple[str, ...]  # ds_config settings the run config overrides; a budget short for its schedule
    completed: bool  # the stage has DONE already (planned only with --overwrite: it trains again from scratch)

    @property
    def number(self) -> int:
        return self.stage.number

    @property
    def stage_dir(self) -> Path:
        return self.cfg.stage_dir(self.stage.number)

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that writes the run's shared files (metrics, DONE) and reports what all ranks share."""
        return self.rank == 0


def plan_stage(cfg: RunConfig, ds_config: dict, *, ds_path: Path, number: int, overwrite: bool) -> StagePlan:
    """The plan of stage `number` for this process. Refuses, in this order: a stage outside the table or
    run_stages, a predecessor that is unfinished or does not match the run's model, a stage naming a role the
    model lacks (stages 1-5 train new rows, which a model without new tokens does not have), a completed stage
    without `overwrite`, and a ds_config this trainer cannot honour or whose batch sizes do not fit the world."""
    from deepspeed.accelerator import get_accelerator

    stage = cfg.stages.get(number)
    if stage is None:
        raise ConfigError(f"{cfg.path}: no stage {number} in the stage table {list(cfg.stages)}")
    previous = cfg.previous_stage(number)
    src_dir = cfg.model if previous is None else cfg.stage_dir(previous) / "final"
    if previous is not None:
        meta, run_meta = check_predecessor(cfg.stage_dir(previous), cfg.model)
    try:  # a model directory that is no stage's input, or the stage's roles: errors of the run config
        if previous is None:
            meta = run_meta = read_model_meta(src_dir)
        _, roles = meta_stage_model(src_dir, stage, ds_config, meta)
        trainable = tuple(trainable_names(roles, stage))
    except ValueError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    completed = (cfg.stage_dir(number) / DONE).is_file()
    if completed and not overwrite:
        raise StageError(f"stage {number} is complete ({cfg.stage_dir(number) / DONE}); pass --overwrite to train it "
                         f"again")
    world = int(os.environ["WORLD_SIZE"])
    batch = batch_shape(ds_config, world, str(ds_path))
    warnings = check_ds_config(ds_config, str(ds_path)) + budget_warnings(stage, batch, cfg.seq_length)
    return StagePlan(
        cfg=cfg, stage=stage, ds_path=ds_path, rank=int(os.environ["RANK"]), world=world,
        ds_config={**ds_config, "gradient_accumulation_steps": batch.grad_accum,
                   "train_batch_size": batch.global_batch},
        device=torch.device(get_accelerator().device_name(int(os.environ["LOCAL_RANK"]))),
        dtype=model_dtype(ds_config), batch=batch, steps=total_steps(stage, batch, cfg.seq_length), src_dir=src_dir,
        meta=meta, run_meta=run_meta, roles=roles, trainable=trainable, warnings=tuple(warnings), completed=completed,
    )
