"""Train one EEVE stage with DeepSpeed ZeRO-3.

    deepspeed megaeeve/train.py --ds_config ds_configs/zero3.json --config RUN.yaml --stage N [--dry-run] [--overwrite]

Also runs under torch.distributed.run, or with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set by hand (SLURM srun: one task per GPU), or as one plain process.

Stage N starts from stage N-1's final/ (stage 1, or the first of `run_stages`, from the run's
`model`), writes run_dir/stage-N/{checkpoints/, final/, metrics.jsonl, tensorboard/, DONE}, and
resumes from its latest checkpoint when restarted. Exit codes: see megaeeve/training/signals.py
(0 done, 2 configuration / precondition error, 99 stopped by SIGUSR1/SIGTERM, requeue).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from megaeeve.data.gpt_dataset import DataError
from megaeeve.model import ModelDirError
from megaeeve.stages import Stage
from megaeeve.training.checkpoint import DONE, StageError
from megaeeve.training.config import BatchShape, ConfigError, RunConfig, batch_shape, load_run_config
from megaeeve.training.signals import CONFIG_ERROR_EXIT_CODE, REQUEUE_EXIT_CODE, StopRequest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds_config", "--ds-config", required=True, type=Path, help="DeepSpeed JSON (ds_configs/)")
    p.add_argument("--config", required=True, type=Path, help="run config (RUN.yaml)")
    p.add_argument("--stage", type=int, help="stage number to train (--dry-run: omit for all stages)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each stage's trainable parameters and optimizer-state bytes; train nothing")
    p.add_argument("--overwrite", action="store_true", help="retrain a stage that already has DONE")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage is None and not args.dry_run:
        p.error("--stage is required (except with --dry-run)")
    return args


def read_ds_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"ds_config {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None


def launch_env(local_rank: int | None) -> None:
    """Fill the torch.distributed env vars for SLURM srun or a plain single process, so DeepSpeed
    never falls back to MPI discovery."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["LOCAL_RANK"] = env["SLURM_PROCID"], env.get("SLURM_LOCALID", "0")
        env.setdefault("WORLD_SIZE", env.get("SLURM_NTASKS", "1"))
    if local_rank is not None:
        env.setdefault("LOCAL_RANK", str(local_rank))
    for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                         ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        env.setdefault(key, default)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(stage: Stage, batch: BatchShape, seq_length: int) -> int:
    """The stage's budget in optimizer steps (a token budget rounds up to whole steps)."""
    if stage.tokens:
        return math.ceil(stage.tokens / (batch.global_batch * seq_length))
    return int(stage.steps)


def meta_model(model_dir: Path, ds_config: dict | None = None) -> torch.nn.Module:
    """The split model of a model directory on the meta device: shapes and names, no weights read."""
    from transformers import AutoConfig

    from megaeeve.model import read_model_meta
    from megaeeve.model.checkpoint import build_split_model
    from megaeeve.training.engine import model_dtype

    meta = read_model_meta(model_dir)
    with torch.device("meta"):
        return build_split_model(AutoConfig.from_pretrained(str(model_dir)), meta, model_dtype(ds_config or {}))


def stage_plans(cfg: RunConfig, ds_config: dict | None = None, stages: list[int] | None = None) -> list[dict]:
    """Per stage: trainable tensors by role with counts, and optimizer-state bytes (for --dry-run and reports)."""
    from megaeeve.model import parameter_roles
    from megaeeve.stages import trainable_names
    from megaeeve.training.engine import optimizer_state_bytes

    model = meta_model(cfg.model, ds_config)
    roles = parameter_roles(model)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(numel.values())
    plans = []
    for number in stages if stages is not None else list(cfg.run_stages):
        stage = cfg.stages[number]
        names = trainable_names(roles, stage)
        n = sum(numel[x] for x in names)
        plans.append({
            "stage": number, "description": stage.description, "total": total, "trainable": n,
            "optimizer_bytes": optimizer_state_bytes(n),
            "roles": {role: [(x, tuple(model.get_parameter(x).shape)) for x in names if roles[x] == role]
                      for role in stage.trainable},
            "role_numel": {role: sum(numel[x] for x in names if roles[x] == role) for role in stage.trainable},
        })
    return plans


def check_roles(cfg: RunConfig, stage: Stage, model_dir: Path) -> None:
    """Refuse, before any process group starts, a stage that names a role the model lacks (stages 1-5
    train new rows, which a model without new tokens does not have)."""
    from megaeeve.model import parameter_roles
    from megaeeve.stages import trainable_names

    try:
        trainable_names(parameter_roles(meta_model(model_dir)), stage)
    except ValueError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None


def dry_run(cfg: RunConfig, ds_config: dict, stages: list[int]) -> None:
    """Per stage: trainable parameters (by role, with counts) and optimizer-state bytes. Builds the
    model on the meta device: no weights are read and nothing is distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plans = stage_plans(cfg, ds_config, stages)
    print(f"model {cfg.model}: {plans[0]['total']:,} parameters; world size {world}")
    for plan in plans:
        stage = cfg.stages[plan["stage"]]
        n, total, opt = plan["trainable"], plan["total"], plan["optimizer_bytes"]
        print(f"\nstage {stage.number}: {stage.description}  (lr {stage.lr:g}, budget "
              f"{f'{stage.tokens:,} tokens' if stage.tokens else f'{stage.steps} steps'})")
        for role, members in plan["roles"].items():
            listing = ", ".join(f"{x} {shape}" for x, shape in members[:4])
            more = f", ... ({len(members)} tensors)" if len(members) > 4 else ""
            print(f"  {role:16s} {plan['role_numel'][role]:>15,}  {listing}{more}")
        print(f"  trainable {n:,} of {total:,} ({100 * n / total:.2f}%); frozen {total - n:,}")
        print(f"  optimizer state (Adam moments + fp32 master): {opt / 2**20:,.1f} MiB in all, "
              f"{opt / world / 2**20:,.1f} MiB per rank")


def run_stage(cfg: RunConfig, ds_config: dict, ds_path: Path, number: int, overwrite: bool) -> int:
    import deepspeed
    import torch.distributed as dist

    from megaeeve.model import load_model_dir, parameter_roles, read_model_meta
    from megaeeve.training import checkpoint as ckpt
    from megaeeve.training.data import stage_data
    from megaeeve.training.engine import flops_per_token, freeze_for_stage, initialize_engine, model_dtype
    from megaeeve.training.loop import LoopSettings, LoopState, evaluate, train
    from megaeeve.training.metrics import Metrics

    stage = cfg.stages.get(number)
    if stage is None:
        raise ConfigError(f"{cfg.path}: no stage {number} in the stage table {list(cfg.stages)}")
    stage_dir = cfg.stage_dir(number)
    previous = cfg.previous_stage(number)
    src_dir = cfg.model if previous is None else cfg.stage_dir(previous) / "final"
    if previous is not None:
        ckpt.check_predecessor(cfg.stage_dir(previous), src_dir, cfg.model)
    check_roles(cfg, stage, src_dir)
    completed = (stage_dir / DONE).is_file()
    if completed and not overwrite:
        raise StageError(f"stage {number} is complete ({stage_dir / DONE}); pass --overwrite to train it again")
    stop = StopRequest().install()
    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    if completed:  # --overwrite: start the stage from scratch
        dist.barrier()
        if rank == 0:
            shutil.rmtree(stage_dir)
        dist.barrier()
    batch = batch_shape(ds_config, world, str(ds_path))
    ds_config = {**ds_config, "gradient_accumulation_steps": batch.grad_accum, "train_batch_size": batch.global_batch}
    steps = total_steps(stage, batch, cfg.seq_length)
    seed_everything(cfg.seed + number)

    meta = read_model_meta(src_dir)
    dtype = model_dtype(ds_config)
    # Import before zero.Init patches torch.Tensor.__new__: torch._dynamo (pulled in by
    # transformers.modeling_utils) fails to import while that patch is active.
    import torch._dynamo  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    model = load_model_dir(src_dir, ds_config, dtype)
    roles = parameter_roles(model)
    freeze_for_stage(model, roles, stage)
    if cfg.training.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine = initialize_engine(model, roles, stage, ds_config, steps, str(ds_path))
    if dtype != torch.float32:
        ckpt.load_fp32_masters(model, src_dir)
    data = stage_data(cfg, stage, steps * batch.global_batch, meta.base_vocab_size)

    ckpt_dir = stage_dir / "checkpoints"
    resumed = ckpt.resume(engine, ckpt_dir)
    state = LoopState(*resumed) if resumed else LoopState(0, 0)
    metrics = Metrics(stage_dir, rank == 0, cfg.training.tensorboard, cfg.training.progress_bar, steps,
                      state.step, number)
    if rank == 0 and resumed:
        print(f"stage {number}: resumed at step {state.step} ({state.consumed_samples} samples consumed)",
              file=sys.stderr)

    def save(s: LoopState) -> None:
        ckpt.save(engine, ckpt_dir, s.step, s.consumed_samples, cfg.training.keep_checkpoints)

    settings = LoopSettings(
        total_steps=steps, batch=batch, seq_length=cfg.seq_length, base_vocab_size=meta.base_vocab_size,
        flops_per_token=flops_per_token(model, roles, cfg.seq_length), log_every=cfg.training.log_every,
        eval_every=cfg.training.eval_every, checkpoint_every=cfg.training.checkpoint_every,
    )
    try:
        if not train(engine, data, state, settings, metrics, stop, save):
            if rank == 0:
                print(f"stage {number}: stopped by signal {stop.signum} at step {state.step}; checkpoint saved, "
                      f"exit {REQUEUE_EXIT_CODE} (requeue)", file=sys.stderr)
            return REQUEUE_EXIT_CODE
        if ckpt.latest_tag(ckpt_dir) != f"step{state.step:08d}":
            save(state)
        final_eval = evaluate(engine, data, batch.micro)
        metrics.log({"kind": "eval", "step": state.step, **final_eval})
        ckpt.export_final(model, src_dir, stage_dir / "final")
        if rank == 0:
            ckpt.write_done(stage_dir, {"stage": number, "steps": state.step, "consumed_samples": state.consumed_samples,
                                        "source": str(src_dir), "trainable": list(stage.trainable), **final_eval})
        dist.barrier()
    finally:
        metrics.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    # DeepSpeed's ZeRO-3 collectives call torch APIs that warn on every step and every rank.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    args = parse_args(argv)
    launch_env(args.local_rank)
    try:
        cfg = load_run_config(args.config)
        ds_config = read_ds_config(args.ds_config)
        if args.dry_run:
            dry_run(cfg, ds_config, [args.stage] if args.stage is not None else list(cfg.run_stages))
            return 0
        return run_stage(cfg, ds_config, args.ds_config, args.stage, args.overwrite)
    except (ConfigError, StageError, DataError, ModelDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE


if __name__ == "__main__":
    code = main()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)
