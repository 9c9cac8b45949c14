"""Checkpoints inside a stage, and the hand-off between stages.

Inside a stage: `engine.save_checkpoint` / `engine.load_checkpoint` (full: fp32 masters, Adam
moments, scheduler) plus our client state (step, consumed samples, RNG states). DeepSpeed 0.19.8
writes `latest` from rank 0 as soon as rank 0's own files are written, before the other ranks finish
and not atomically, so a kill inside a save could leave `latest` naming a checkpoint with missing or
cut files. Here DeepSpeed writes no `latest`: once every rank has written and synced its files, rank 0
writes the checkpoint's COMPLETE marker (every file and its size), then `latest`, each atomically, and
only then removes older checkpoints. A restart resumes from the newest checkpoint whose marker and
files agree, and reports a newer one cut short: a kill at any moment costs at most the steps since
the last complete checkpoint.

Between stages: never `load_checkpoint` (it fails when the trainable set changes). The stage's
final weights are written as final/ (a model directory, sharded across ranks for large models):
trainable tensors as their fp32 masters, frozen tensors copied from the stage's input directory
after checking bitwise that the engine did not move them. DONE is written last; the next stage
starts only from a DONE stage.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param, safe_set_local_fp32_param
from safetensors.torch import save_file

from megaeeve.atomic import atomic_dir, atomic_file, write_json
from megaeeve.errors import StageError
from megaeeve.log import logger
from megaeeve.model import ModelMeta, read_model_meta
from megaeeve.model.checkpoint import copy_model_files
from megaeeve.model.lora import ADAPTER, file_name, lora_layers, lora_roles, merged_weight
from megaeeve.model.output_map import PARAMS as MAP_PARAMS
from megaeeve.model.output_map import folded_rows, mapped
from megaeeve.model.partition import local_values, read_partition
from megaeeve.model.weights import SINGLE_FILE, open_weights, plan_shards, shard_name, write_index
from megaeeve.tokenizer_io import load_tokenizer, tokenizer_fingerprint
from megaeeve.training.collectives import all_reduce_values, group_size

log = logger(__name__)

DONE = "DONE"
COMPLETE = "COMPLETE"  # in a checkpoint directory, written last: {"step", "world_size", "files": {name: bytes}}
TAG = re.compile(r"step\d{8}")
# Test hook (tests/test_checkpoint_kill.py): "RANK:STEP:POINT" makes that rank stop for an hour at POINT of the save
# of STEP, so a test can kill -9 inside the save deterministically. Points: before-file-K, inside-file-K (half of
# the rank's K-th DeepSpeed file written), and on rank 0 before-latest (after the COMPLETE marker).
PAUSE_ENV = "MEGAEEVE_TEST_CHECKPOINT_PAUSE"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_tag(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def save(engine: Any, ckpt_dir: Path, *, step: int, consumed_samples: int, keep: int, rank: int, world: int) -> None:
    """Save a resumable checkpoint (all `world` ranks, in step; `rank` is this one's); rank 0 marks it complete,
    points `latest` at it and then keeps only the newest `keep` complete checkpoints (all of them if `keep` <= 0),
    so the one before stays until this one is complete."""
    tag = f"step{step:08d}"
    if rank == 0:  # a tag saved again (a stage resumed at its last step) is not complete until written again;
        (ckpt_dir / tag / COMPLETE).unlink(missing_ok=True)  # save_checkpoint's first barrier orders this first
    with _recorded_writes(engine, step, rank) as written:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False,
                               client_state={"step": step, "consumed_samples": consumed_samples, "rng": rng_state()})
    sizes = {}
    for path in written:  # on disk before the marker says so (a node lost, not only a process killed)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        sizes[path.name] = path.stat().st_size
    every = [None] * world if rank == 0 else None
    dist.gather_object(sizes, every, dst=0)  # returns on rank 0 once every rank's files are written and synced
    if rank == 0:
        write_json(ckpt_dir / tag / COMPLETE, {"step": step, "world_size": world,
                                               "files": {k: v for files in every for k, v in files.items()}})
        _pause("before-latest", step, rank)
        with atomic_file(ckpt_dir / "latest", "w") as f:  # for DeepSpeed's tools (zero_to_fp32)
            f.write(tag)
        _prune(ckpt_dir, keep, tag)
    dist.barrier()


def _prune(ckpt_dir: Path, keep: int, current: str) -> None:
    """Remove every checkpoint but the newest `keep` complete ones (`current`, just marked, among them), and
    any left incomplete; each is renamed away first, so a kill inside the removal leaves no half checkpoint."""
    for trash in ckpt_dir.glob(".step*.removing"):  # left by a kill inside an earlier removal
        shutil.rmtree(trash, ignore_errors=True)
    tags = _tags(ckpt_dir)
    complete = [t for t in tags if t.name == current or _incomplete_reason(t) is None]
    kept = set(complete[-keep:] if keep > 0 else complete)
    for old in (t for t in tags if t not in kept):
        trash = old.with_name(f".{old.name}.removing")
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _tags(ckpt_dir: Path) -> list[Path]:
    """The checkpoint directories, oldest first."""
    return sorted(p for p in ckpt_dir.glob("step*") if TAG.fullmatch(p.name) and p.is_dir())


def _incomplete_reason(tag_dir: Path) -> str | None:
    """Why the checkpoint `tag_dir` cannot be resumed from (its save was cut short), or None if it is complete:
    its COMPLETE marker exists and every file it lists has the size it lists."""
    marker = tag_dir / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} marker"
    for name, size in json.loads(marker.read_text())["files"].items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} of its {size:,} bytes"
    return None


@contextlib.contextmanager
def _recorded_writes(engine: Any, step: int, rank: int):
    """Yield the list of files this rank writes through DeepSpeed's checkpoint engine inside the block."""
    written: list[Path] = []
    real = engine.checkpoint_engine.save

    def save(state_dict: Any, path: str) -> None:
        k = len(written)
        written.append(Path(path))
        _pause(f"before-file-{k}", step, rank)
        if _pausing(f"inside-file-{k}", step, rank):
            data = io.BytesIO()
            torch.save(state_dict, data)
            with open(path, "wb") as f:
                f.write(data.getbuffer()[: len(data.getbuffer()) // 2])
            _pause(f"inside-file-{k}", step, rank)
        real(state_dict, path)

    engine.checkpoint_engine.save = save
    try:
        yield written
    finally:
        del engine.checkpoint_engine.save  # the instance attribute: the class's method again


def _pausing(point: str, step: int, rank: int) -> bool:
    return os.environ.get(PAUSE_ENV) == f"{rank}:{step}:{point}"


def _pause(point: str, step: int, rank: int) -> None:
    """The test hook (PAUSE_ENV): announce the pause and wait to be killed. A warning, so that a rank other than 0
    says it too (the logger keeps their info lines quiet)."""
    if _pausing(point, step, rank):
        log.warning(f"checkpoint test pause: rank {rank} at {point} of step {step}")
        time.sleep(3600)


def resume(engine: Any, ckpt_dir: Path, rank: int) -> tuple[int, int] | None:
    """Load the newest complete checkpoint if any: returns (step, consumed samples) and restores RNG states.
    A newer checkpoint whose save was cut short is reported in one line (rank 0) and skipped."""
    choice: list[str | None] = [None]
    if rank == 0:
        choice[0] = _newest_complete(ckpt_dir)
    dist.broadcast_object_list(choice, src=0)  # every rank loads the same tag
    tag = choice[0]
    if tag is None:
        return None
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise StageError(f"{ckpt_dir}: could not load checkpoint {tag}")
    set_rng_state(client["rng"])
    return int(client["step"]), int(client["consumed_samples"])


def _newest_complete(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint's tag; each newer, incomplete one is reported as a warning."""
    chosen, skipped = None, []
    for tag_dir in reversed(_tags(ckpt_dir)):
        reason = _incomplete_reason(tag_dir)
        if reason is None:
            chosen = tag_dir.name
            break
        skipped.append((tag_dir.name, reason))
    then = f"resuming from {chosen}" if chosen else "no complete checkpoint before it: the stage starts from step 0"
    for name, reason in skipped:
        log.warning(f"{ckpt_dir}: checkpoint {name} is incomplete ({reason}: its save was cut short); {then}")
    return chosen


def _config_shape(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "config.json").read_text())
    return {k: cfg.get(k) for k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                                    "intermediate_size", "num_attention_heads")}


def check_predecessor(stage_dir: Path, stage0_dir: Path) -> tuple[ModelMeta, ModelMeta]:
    """Refuse a predecessor stage that is incomplete or whose vocabulary/shape differs from the run's model.
    Returns the metadata of its final/ and of the run's model, each read once (the stage plan keeps both)."""
    if not (stage_dir / DONE).is_file():
        raise StageError(f"{stage_dir} has no {DONE} marker: finish that stage first")
    final_dir = stage_dir / "final"
    ours, theirs = read_model_meta(stage0_dir), read_model_meta(final_dir)
    for key in ("base_vocab_size", "num_added", "padded_vocab_size", "hidden_size", "tokenizer_fingerprint"):
        if getattr(ours, key) != getattr(theirs, key):
            raise StageError(f"{final_dir}: {key} = {getattr(theirs, key)!r} but the run's model {stage0_dir} "
                             f"has {getattr(ours, key)!r}")
    if _config_shape(final_dir) != _config_shape(stage0_dir):
        raise StageError(f"{final_dir}/config.json shape {_config_shape(final_dir)} differs from {stage0_dir}'s "
                         f"{_config_shape(stage0_dir)}")
    tokenizer = final_dir / "tokenizer.json"
    if tokenizer.is_file() and tokenizer_fingerprint(load_tokenizer(tokenizer)) != ours.tokenizer_fingerprint:
        raise StageError(f"{tokenizer} is not the tokenizer of the run's model {stage0_dir}")
    return theirs, ours


def load_fp32_masters(model: torch.nn.Module, src_dir: Path) -> None:
    """Set trainable parameters' fp32 masters to the exact tensors of `src_dir` (the hand-off is fp32,
    the bf16 working copy loaded by load_model_dir is not). Each rank sets its own partition."""
    with open_weights(src_dir) as f:
        for name, p in model.named_parameters():
            if p.requires_grad and name in f.keys():  # LoRA adapters are new: their masters are their init
                safe_set_local_fp32_param(p, read_partition(f, name, p).float())


def export_final(model: torch.nn.Module, src_dir: Path, *, out_dir: Path, shard_bytes: int, rank: int,
                 world: int) -> None:
    """Write the stage's weights as the model directory `out_dir`; every one of the `world` ranks calls, in step.

    Trainable parameters: their fp32 masters. Frozen parameters and buffers: the input tensors, after
    each rank checked that its partition of the engine's copy still equals its slice of the input
    bitwise (invariant 2); a LoRA layer's weight gets its merged adapters (PEFT's own delta), in fp32, and the new
    output rows a stage's output map (output_map.py) folded in, in fp32.
    The tensors are cut into shards of at most `shard_bytes`; shard k belongs to rank k % world, which
    assembles and writes it; a trainable tensor's partitions are gathered to its owner only, so no rank
    holds more than one shard plus the parameter being gathered. Rank 0 publishes the directory atomically.
    """
    adapters = lora_layers(model)
    head = mapped(model)  # (module path, head) where the stage added an output map
    prefix = f"{head[0]}." if head and head[0] else ""
    extra = {*lora_roles(model), *(prefix + n for n in (MAP_PARAMS if head else ()))}
    params = {file_name(n): p for n, p in model.named_parameters() if n not in extra}
    fold = f"{prefix}added" if head else None
    with open_weights(src_dir) as src:
        sizes = [(name, (4 if name in params and params[name].requires_grad else
                         _itemsize(src.get_slice(name).get_dtype())) * math.prod(src.get_slice(name).get_shape()))
                 for name in [*params, *(k for k in src.keys() if k not in params)]]
        shards = plan_shards(sizes, shard_bytes)
        files = [SINGLE_FILE] if len(shards) == 1 else [shard_name(k, len(shards)) for k in range(len(shards))]
        with _shared_atomic_dir(out_dir, rank) as tmp:
            moved: list[str] = []
            for k, names in enumerate(shards):
                mine = k % world == rank
                shard: dict[str, torch.Tensor] = {}
                for name in names:
                    p = params.get(name)
                    if p is not None and p.requires_grad:
                        value = _gather_fp32_master(p, owner=k % world, rank=rank, world=world)  # collective
                    else:
                        if p is not None:
                            held = local_values(p).cpu()
                            if not torch.equal(held, read_partition(src, name, p)[: held.numel()].to(held.dtype)):
                                moved.append(name)
                        value = src.get_tensor(name) if mine else None
                        if name in adapters:
                            value = _merge_lora(adapters[name], value)
                    if name == fold:
                        value = _fold_output_map(head[1], value)
                    if mine:
                        shard[name] = value
                if mine:
                    save_file(shard, str(tmp / files[k]), metadata={"format": "pt"})
            if all_reduce_values([float(len(moved))])[0]:
                raise StageError(f"frozen parameter(s) changed during the stage (rank {rank}: {moved[:5]})")
            if rank == 0:
                if len(shards) > 1:
                    write_index(tmp, shards, sum(n for _, n in sizes))
                copy_model_files(src_dir, tmp)


def _gather_fp32_master(p: torch.nn.Parameter, *, owner: int, rank: int, world: int) -> torch.Tensor | None:
    """The full fp32 master of a trainable parameter on rank `owner` only (None elsewhere): each rank sends
    its zero-padded partition, so no other rank materialises the whole tensor (DeepSpeed's
    safe_get_full_fp32_param all-reduces a full-size tensor on every rank); every rank calls, in the same order."""
    assert group_size(p.ds_process_group) == world, "ZeRO partitions span the world"
    local = safe_get_local_fp32_param(p).contiguous()
    parts = [torch.empty_like(local) for _ in range(world)] if rank == owner else None
    dist.gather(local, parts, dst=owner)
    if parts is None:
        return None
    return torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu().contiguous()


def _merge_lora(layer: torch.nn.Module, weight: torch.Tensor | None) -> torch.Tensor | None:
    """W + PEFT's delta (lora.merged_weight) from the adapters' fp32 masters (collective: every rank calls;
    `weight` is None on ranks that do not write this tensor)."""
    a = safe_get_full_fp32_param(layer.lora_A[ADAPTER].weight)
    b = safe_get_full_fp32_param(layer.lora_B[ADAPTER].weight)
    if weight is None:
        return None
    return merged_weight(layer, weight, a.cpu(), b.cpu())


def _fold_output_map(head: torch.nn.Module, rows: torch.Tensor | None) -> torch.Tensor | None:
    """The new output rows with the stage's map folded in (output_map.folded_rows), from A's and B's fp32
    masters (collective: every rank calls; `rows` is None on ranks that do not write them)."""
    a = safe_get_full_fp32_param(head.map_a)
    b = safe_get_full_fp32_param(head.map_b)
    if rows is None:
        return None
    return folded_rows(head.map_features.cpu(), rows, a.cpu(), b.cpu())


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}[dtype]


@contextlib.contextmanager
def _shared_atomic_dir(out_dir: Path, rank: int):
    """atomic_dir for all ranks: rank 0 makes the temporary directory (on the shared run directory), every
    rank writes into it, and rank 0 publishes it once all are done."""
    with contextlib.ExitStack() as stack:
        path = [str(stack.enter_context(atomic_dir(out_dir, overwrite=True))) if rank == 0 else None]
        dist.broadcast_object_list(path, src=0)
        yield Path(path[0])
        dist.barrier()


def write_done(stage_dir: Path, summary: dict[str, Any]) -> None:
    """The completion marker, written last (rank 0)."""
    write_json(stage_dir / DONE, summary)
