"""One DeepSpeed ZeRO-3 engine per stage: freeze by role, parameter groups, warmup + cosine.

`requires_grad` is fixed before `deepspeed.initialize`, which is why a stage is an engine (and a
process) of its own: ZeRO-3 builds optimizer partitions only for parameters that require grad,
so frozen parameters get no fp32 master, no Adam moments and no weight decay.
"""

from __future__ import annotations

from typing import Any, Mapping

import deepspeed
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from megaeeve.errors import ConfigError
from megaeeve.stages import ADDED_ROLES, EMBEDDING_ROLES, OUTPUT_MAP, Stage, cosine, trainable_names

# Adam(W) keeps two fp32 moments per trainable parameter; ZeRO keeps an fp32 master copy too.
ADAM_STATE_BYTES = 8
FP32_MASTER_BYTES = 4


def model_dtype(ds_config: Mapping[str, Any]) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))


def freeze_for_stage(model: nn.Module, roles: Mapping[str, str], stage: Stage) -> list[str]:
    """Set requires_grad from the stage's roles; returns the trainable parameter names."""
    names = set(trainable_names(roles, stage))
    for name, p in model.named_parameters():
        if name not in roles:
            raise ValueError(f"parameter {name} has no role (parameter_roles does not cover it)")
        p.requires_grad_(name in names)
    return [n for n, _ in model.named_parameters() if n in names]


def param_groups(model: nn.Module, roles: Mapping[str, str], stage: Stage) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters only, each with the stage's lr and its weight decay.

    Embedding and lm_head rows decay only if `embedding_weight_decay` asks; body matrices use
    `weight_decay`; 1-D tensors (biases, the lm_head's `bias_original` / `bias_added` included, and norm
    weights) never decay: a decayed bias is pulled to 0 even where its gradient is 0. With an
    `added_rows_lr_scale` other than 1 the new tokens' parameters (roles in ADDED_ROLES) form groups of their own
    ("added_" + the group's name) at that multiple of the lr; a stage's output map (role `output_map`) is a group
    of its own at its `lr_scale`, without decay. The schedule scales every group alike.
    """
    decay = {"embeddings": stage.embedding_weight_decay, "body_decay": stage.weight_decay, "no_decay": 0.0}
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if roles[name] == OUTPUT_MAP:  # the map is limited by its rank, not pulled to 0 (as in fit_output_rows)
            key, weight_decay, lr = OUTPUT_MAP, 0.0, stage.lr * stage.output_map.lr_scale
        else:
            kind = ("no_decay" if len(full_shape(p)) < 2
                    else "embeddings" if roles[name] in EMBEDDING_ROLES else "body_decay")
            scaled = roles[name] in ADDED_ROLES and stage.added_rows_lr_scale != 1
            key, weight_decay = f"added_{kind}" if scaled else kind, decay[kind]
            lr = stage.lr * (stage.added_rows_lr_scale if scaled else 1)
        group = groups.setdefault(key, {"weight_decay": weight_decay, "lr": lr, "params": [], "names": []})
        group["params"].append(p)
        group["names"].append(name)
    order = [*(k for kind in decay for k in (kind, f"added_{kind}")), OUTPUT_MAP]  # fixed: resumed states match
    return [{"group": k, **groups[k]} for k in order if k in groups]


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """lr multiplier: linear warmup to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return cosine(progress, min_lr_ratio)

    return factor


def check_ds_config(ds_config: Mapping[str, Any], where: str) -> list[str]:
    """What DeepSpeed would accept but this trainer cannot honour: a schedule (the run config owns it)
    and Hugging Face's "auto" values (only its Trainer fills them in). Returns warnings: settings the
    run config overrides."""
    if "scheduler" in ds_config:
        raise ConfigError(f"{where}: remove the `scheduler` section; the run config sets each stage's schedule")

    def autos(value: Any, key: str) -> list[str]:
        if isinstance(value, Mapping):
            return [k for name, v in value.items() for k in autos(v, f"{key}.{name}" if key else name)]
        return [key] if value == "auto" else []

    found = autos(ds_config, "")
    if found:
        raise ConfigError(f"{where}: {', '.join(found)} = \"auto\": only Hugging Face's Trainer fills in \"auto\"; "
                          f"give a number (batch sizes here, learning rates in the run config)")
    params = ds_config.get("optimizer", {}).get("params", {})
    return [f"{where}: optimizer.params.{key} = {params[key]} is ignored: each stage's {key} comes from the run "
            f"config" for key in ("lr", "weight_decay") if key in params]


def initialize_engine(model: nn.Module, roles: Mapping[str, str], *, stage: Stage, ds_config: dict[str, Any],
                      total_steps: int) -> Any:
    """deepspeed.initialize with the stage's parameter groups and a warmup+cosine LambdaLR.

    The optimizer comes from the ds_config's "optimizer" section when present (its group lr and
    weight decay are overridden by ours), else torch AdamW. The schedule belongs to the run
    config: `ds_config` is one `check_ds_config` accepted (the stage plan checks it once), so it has no
    "scheduler" section.
    """
    groups = param_groups(model, roles, stage)
    for g in groups:
        g.pop("names")
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = round(stage.warmup_ratio * total_steps)
    schedule = warmup_cosine(total_steps, warmup, stage.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups if optimizer is None else None,
        optimizer=optimizer,
        lr_scheduler=lambda opt: LambdaLR(opt, schedule),
        config=ds_config,
    )
    return engine


def optimizer_state_bytes(trainable_numel: int) -> int:
    """Adam moments plus the fp32 master copy (ZeRO-3 keeps one even in fp32 training), all ranks together."""
    return trainable_numel * (ADAM_STATE_BYTES + FP32_MASTER_BYTES)


def restart_parameter_trace(engine: Any) -> None:
    """Make ZeRO-3 record its parameter trace afresh from the next training step.

    ZeRO-3 records the order in which modules fetch their parameters over the first forward (+ backward) and
    then prefetches and releases by that trace. A forward-only pass before the first backward (the stage's
    step-0 evaluation) completes a trace of the forward alone; the first backward invalidates it and a full
    one is recorded, but DeepSpeed 0.19.8 memoises which parameters each module may release
    (`PartitionedParameterCoordinator.__params_to_release`, an lru_cache keyed by module and position) and
    never clears that cache on invalidation. The forward-only trace's answer, "release everything after the
    forward", then stands for the whole stage: every parameter is gathered twice a step, module by module
    (SmolLM2 stage 6: 552 all_gathers a step instead of 6, bench/RESULTS.md). Invalidating the trace and
    clearing that cache after the evaluation lets the first training step record the trace the steps use.
    A no-op for engines other than ZeRO-3.
    """
    if engine.zero_optimization_stage() != 3:
        return
    coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
    if not coordinator.is_invalid_trace():
        coordinator._invalidate_trace()
    method = getattr(type(coordinator), "_PartitionedParameterCoordinator__params_to_release", None)
    for cell in getattr(method, "__closure__", None) or ():  # the lru_cache sits inside DeepSpeed's nvtx wrapper
        if hasattr(cell.cell_contents, "cache_clear"):
            cell.cell_contents.cache_clear()
