"""Train one EEVE stage with DeepSpeed ZeRO-3.

    deepspeed megaeeve/train.py --ds_config ds_configs/zero3.json --config RUN.yaml --stage N [--dry-run] [--overwrite]

Also runs under torch.distributed.run, or with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set by hand (SLURM srun: one task per GPU), or as one plain process.

Stage N starts from stage N-1's final/ (stage 1, or the first of `run_stages`, from the run's
`model`), writes run_dir/stage-N/{checkpoints/, final/, metrics.jsonl, tensorboard/, DONE}, and
resumes from its newest complete checkpoint when restarted. Exit codes: see megaeeve/training/signals.py
(0 done, 2 configuration / precondition error, 99 stopped by SIGUSR1/SIGTERM, requeue).
"""

from __future__ import annotations

import argparse
import datetime
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

from megaeeve.errors import ConfigError, DataError, StageError, one_line_errors
from megaeeve.stages import DEFAULT_STAGES, Stage
from megaeeve.training.checkpoint import DONE
from megaeeve.training.config import BatchShape, RunConfig, batch_shape, load_run_config
from megaeeve.training.engine import check_ds_config
from megaeeve.training.signals import REQUEUE_EXIT_CODE, StopRequest


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds_config", "--ds-config", "--deepspeed_config", "--deepspeed", dest="ds_config", required=True,
                   type=Path, help="DeepSpeed JSON (ds_configs/); --deepspeed_config / --deepspeed as in "
                                   "Megatron-DeepSpeed and Hugging Face")
    p.add_argument("--config", type=Path, help="run config (RUN.yaml)")
    p.add_argument("--stage", type=int, help="stage number to train (--dry-run: omit for all stages)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the run config, its data and the ds_config; print each stage's trainable parameters "
                        "and optimizer-state bytes per rank; train nothing")
    p.add_argument("--model", type=Path,
                   help="--dry-run: plan this model directory (a stage-0 dir, or configs/models/*) instead of the "
                        "run's; without --config the default stage table is planned")
    p.add_argument("--world-size", type=int, nargs="+",
                   help="--dry-run: rank counts to plan for (default: WORLD_SIZE, else 1)")
    p.add_argument("--overwrite", action="store_true", help="retrain a stage that already has DONE")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage is None and not args.dry_run:
        p.error("--stage is required (except with --dry-run)")
    if args.config is None and not (args.dry_run and args.model):
        p.error("--config is required (except with --dry-run --model DIR)")
    if (args.model or args.world_size) and not args.dry_run:
        p.error("--model and --world-size only plan: use them with --dry-run")
    if args.world_size and min(args.world_size) < 1:
        p.error(f"--world-size must be >= 1, got {args.world_size}")
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


MIN_STEPS = 100


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


def meta_model(model_dir: Path, ds_config: dict | None = None) -> torch.nn.Module:
    """The split model of a model directory on the meta device: shapes and names, no weights read."""
    from transformers import AutoConfig

    from megaeeve.model import read_model_meta
    from megaeeve.model.checkpoint import build_split_model
    from megaeeve.training.engine import model_dtype

    meta = read_model_meta(model_dir)
    with torch.device("meta"):
        return build_split_model(AutoConfig.from_pretrained(str(model_dir)), meta, model_dtype(ds_config or {}))


def meta_stage_model(model_dir: Path, stage: Stage, ds_config: dict | None = None
                     ) -> tuple[torch.nn.Module, dict[str, str]]:
    """The split model on the meta device as `stage` builds it (its LoRA adapters added), and its parameter roles:
    a LoRA stage's names carry `.base_layer.` and its adapters are parameters of their own."""
    from megaeeve.model import parameter_roles
    from megaeeve.model.lora import add_lora

    model = meta_model(model_dir, ds_config)
    if stage.lora is not None:
        add_lora(model, stage.lora)
    return model, parameter_roles(model)


def stage_plans(model_dir: Path, stages: list[Stage], ds_config: dict | None = None) -> list[dict]:
    """Per stage: trainable tensors by role with counts, and optimizer-state bytes (for --dry-run and reports)."""
    from megaeeve.stages import trainable_names
    from megaeeve.training.engine import optimizer_state_bytes

    plans = []
    for stage in stages:
        model, roles = meta_stage_model(model_dir, stage, ds_config)
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


def check_run(cfg: RunConfig, ds_config: dict, ds_path: Path, stages: list[int], worlds: list[int]) -> None:
    """Everything a stage checks before it loads a model: the stage table, the ds_config against each
    world size, the model directory (and its pieces table if a stage distils), and every data prefix
    (header against both file sizes, token dtype against the vocabulary)."""
    from megaeeve.data.gpt_dataset import document_split
    from megaeeve.model import read_model_meta
    from megaeeve.model.checkpoint import read_pieces
    from megaeeve.training.data import open_prefix

    for number in stages:
        cfg.previous_stage(number)  # a stage outside run_stages is a ConfigError naming it
    found = check_ds_config(ds_config, str(ds_path))
    for world in worlds:
        batch = batch_shape(ds_config, world, str(ds_path))
        found += [w for number in stages for w in budget_warnings(cfg.stages[number], batch, cfg.seq_length)]
    for warning in found:
        print(f"warning: {warning}", file=sys.stderr)
    meta = read_model_meta(cfg.model)
    if any(cfg.stages[number].objective != "lm" for number in stages):
        read_pieces(cfg.model, meta)  # a distilling stage's teacher input
    for source in cfg.data.sources:
        docs = open_prefix(source.prefix)
        dtype = np.dtype(docs.dtype)
        if dtype.kind not in "iu" or meta.padded_vocab_size > np.iinfo(dtype).max + 1:
            raise DataError(f"{source.prefix}.idx: token dtype {dtype.name} cannot hold the model's "
                            f"{meta.padded_vocab_size:,} ids: preprocess it with the expanded tokenizer")
        document_split(len(docs), cfg.data.valid_fraction, str(source.prefix))


def check_roles(cfg: RunConfig, stage: Stage, model_dir: Path) -> None:
    """Refuse, before any process group starts, a stage that names a role the model lacks (stages 1-5
    train new rows, which a model without new tokens does not have)."""
    try:
        stage_plans(model_dir, [stage])
    except ValueError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None


def dry_run(model_dir: Path, stages: list[Stage], ds_config: dict, worlds: list[int]) -> None:
    """Per stage: trainable parameters (by role, with counts) and optimizer-state bytes per rank for each
    world size. Builds the model on the meta device: no weights are read and nothing is distributed."""
    plans = stage_plans(model_dir, stages, ds_config)
    print(f"model {model_dir}: {plans[0]['total']:,} parameters; planned for {', '.join(map(str, worlds))} rank(s)")
    for stage, plan in zip(stages, plans):
        n, total, opt = plan["trainable"], plan["total"], plan["optimizer_bytes"]
        print(f"\nstage {stage.number}: {stage.description}  (lr {stage.lr:g}, budget "
              f"{f'{stage.tokens:,} tokens' if stage.tokens else f'{stage.steps} steps'}, objective {stage.objective})")
        for role, members in plan["roles"].items():
            listing = ", ".join(f"{x} {shape}" for x, shape in members[:4])
            more = f", ... ({len(members)} tensors)" if len(members) > 4 else ""
            print(f"  {role:16s} {plan['role_numel'][role]:>15,}  {listing}{more}")
        print(f"  trainable {n:,} of {total:,} ({100 * n / total:.2f}%); frozen {total - n:,}")
        per_rank = "; ".join(f"{world} ranks: {_size(opt / world)} per rank" for world in worlds)
        print(f"  optimizer state (Adam moments + fp32 master): {_size(opt)} in all; {per_rank}")


def _size(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def run_stage(cfg: RunConfig, ds_config: dict, ds_path: Path, number: int, overwrite: bool) -> int:
    import torch.distributed as dist

    from megaeeve.model import load_model_dir, parameter_roles, read_model_meta
    from megaeeve.model.lora import add_lora
    from megaeeve.training import checkpoint as ckpt
    from megaeeve.training.data import stage_data
    from megaeeve.training.engine import freeze_for_stage, initialize_engine, model_dtype
    from megaeeve.training.loop import LoopSettings, LoopState, evaluate, train
    from megaeeve.training.objectives import stage_objective
    from megaeeve.training.metrics import Metrics, MetricsSettings
    from megaeeve.training.throughput import flops_per_token, peak_tflops

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
    if cfg.training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
        torch.use_deterministic_algorithms(True)
    stop = StopRequest().install()
    init_distributed(cfg.training.dist_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    if completed:  # --overwrite: start the stage from scratch
        dist.barrier()
        if rank == 0:
            shutil.rmtree(stage_dir)
        dist.barrier()
    batch = batch_shape(ds_config, world, str(ds_path))
    found = check_ds_config(ds_config, str(ds_path)) + budget_warnings(stage, batch, cfg.seq_length)
    for warning in found if rank == 0 else []:
        print(f"warning: {warning}", file=sys.stderr)
    ds_config = {**ds_config, "gradient_accumulation_steps": batch.grad_accum, "train_batch_size": batch.global_batch}
    steps = total_steps(stage, batch, cfg.seq_length)
    seed_everything(cfg.seed + number)

    meta = read_model_meta(src_dir)
    dtype = model_dtype(ds_config)
    # Import before zero.Init patches torch.Tensor.__new__: torch._dynamo (pulled in by
    # transformers.modeling_utils) fails to import while that patch is active.
    import torch._dynamo  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    model = load_model_dir(src_dir, ds_config, dtype, cfg.training.attn_implementation)
    if stage.lora is not None:
        add_lora(model, stage.lora)
    roles = parameter_roles(model)
    trainable = freeze_for_stage(model, roles, stage)
    if cfg.training.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine = initialize_engine(model, roles, stage, ds_config, steps, str(ds_path))
    if dtype != torch.float32:
        ckpt.load_fp32_masters(model, src_dir)
    objective = stage_objective(stage, cfg.model, ds_config, dtype, cfg.training.attn_implementation,
                                torch.device(engine.device))
    data = stage_data(cfg, stage, steps * batch.global_batch, meta.base_vocab_size)

    ckpt_dir = stage_dir / "checkpoints"
    resumed = ckpt.resume(engine, ckpt_dir)
    state = LoopState(*resumed) if resumed else LoopState(0, 0)
    t = cfg.training
    metrics = Metrics(MetricsSettings(stage_dir, number, steps, state.step, steps_before(cfg, number), t.report_to,
                                      t.progress_bar, cfg.run_dir.name, t.wandb_project), rank == 0)
    if rank == 0 and resumed:
        print(f"stage {number}: resumed at step {state.step} ({state.consumed_samples} samples consumed)",
              file=sys.stderr)

    def save(s: LoopState) -> None:
        ckpt.save(engine, ckpt_dir, s.step, s.consumed_samples, cfg.training.keep_checkpoints)

    settings = LoopSettings(
        total_steps=steps, batch=batch, seq_length=cfg.seq_length, base_vocab_size=meta.base_vocab_size,
        flops_per_token=flops_per_token(model, roles, cfg.seq_length, trainable),
        peak_tflops=peak_tflops(torch.device(engine.device), cfg.training.peak_tflops), log_every=cfg.training.log_every,
        eval_every=cfg.training.eval_every, checkpoint_every=cfg.training.checkpoint_every,
    )
    try:
        if not train(engine, data, state, settings, metrics, stop, save, objective):
            if rank == 0:
                print(f"stage {number}: stopped by signal {stop.signum} at step {state.step}; checkpoint saved, "
                      f"exit {REQUEUE_EXIT_CODE} (requeue)", file=sys.stderr)
            return REQUEUE_EXIT_CODE
        if ckpt.latest_tag(ckpt_dir) != f"step{state.step:08d}":
            save(state)
        final_eval = evaluate(engine, data, batch.micro, objective)
        metrics.log({"kind": "eval", "step": state.step, **final_eval})
        ckpt.export_final(model, src_dir, stage_dir / "final", cfg.training.handoff_shard_mb * 2**20)
        if rank == 0:
            ckpt.write_done(stage_dir, {"stage": number, "steps": state.step, "consumed_samples": state.consumed_samples,
                                        "source": str(src_dir), "trainable": list(stage.trainable), **final_eval})
        dist.barrier()
    finally:
        metrics.close()
    return 0


def steps_before(cfg: RunConfig, number: int) -> int:
    """Optimizer steps of the stages before `number` in run_stages (their DONE markers): the offset that
    makes TensorBoard and wandb steps continue across stages."""
    before = cfg.run_stages[: cfg.run_stages.index(number)]
    done = [cfg.stage_dir(n) / DONE for n in before]
    return sum(json.loads(p.read_text())["steps"] for p in done if p.is_file())


def init_distributed(timeout_s: float) -> None:
    """deepspeed.init_distributed with the run's timeout; a rank that cannot reach its peers says where it looked."""
    import deepspeed

    try:
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
        env = os.environ
        raise StageError(f"rank {env.get('RANK')} of {env.get('WORLD_SIZE')} could not reach its peers at "
                         f"MASTER_ADDR={env.get('MASTER_ADDR')} MASTER_PORT={env.get('MASTER_PORT')} within "
                         f"{timeout_s:g} s (training.dist_timeout_s): {str(e).splitlines()[0]}") from None


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    # DeepSpeed's ZeRO-3 collectives call torch APIs that warn on every step and every rank.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    args = parse_args(argv, prog)
    launch_env(args.local_rank)
    ds_config = read_ds_config(args.ds_config)
    if args.dry_run:
        worlds = args.world_size or [int(os.environ["WORLD_SIZE"])]
        if args.config is None:
            check_ds_config(ds_config, str(args.ds_config))
            numbers = [args.stage] if args.stage is not None else list(DEFAULT_STAGES)
            if args.stage is not None and args.stage not in DEFAULT_STAGES:
                raise ConfigError(f"no stage {args.stage} in the default stage table {list(DEFAULT_STAGES)}")
            dry_run(args.model, [DEFAULT_STAGES[n] for n in numbers], ds_config, worlds)
            return 0
        cfg = load_run_config(args.config)
        numbers = [args.stage] if args.stage is not None else list(cfg.run_stages)
        check_run(cfg, ds_config, args.ds_config, numbers, worlds)
        dry_run(args.model or cfg.model, [cfg.stages[n] for n in numbers], ds_config, worlds)
        print("\nchecks passed: stage table, ds_config, model directory, data prefixes")
        return 0
    return run_stage(load_run_config(args.config), ds_config, args.ds_config, args.stage, args.overwrite)


if __name__ == "__main__":
    code = main()
    import logging

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    # Everything is written and closed by now. Leave without interpreter finalization: tearing down the
    # C++ threads of gloo and DeepSpeed's CPU ops there now and then aborts a rank whose stage has finished
    # ("terminate called without an active exception", SIGABRT: seen once in ~170 CPU stage launches).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
