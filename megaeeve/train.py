"""Train one EEVE stage with DeepSpeed ZeRO-3.

    deepspeed megaeeve/train.py --ds_config ds_configs/zero3.json --config RUN.yaml --stage N [--dry-run] [--overwrite]

Also runs under torch.distributed.run, or with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set by hand (SLURM srun: one task per GPU), or as one plain process.

Stage N starts from stage N-1's final/ (stage 1, or the first of `run_stages`, from the run's
`model`), writes run_dir/stage-N/{checkpoints/, final/, metrics.jsonl, tensorboard/, DONE}, and
resumes from its newest complete checkpoint when restarted. Exit codes: see megaeeve/training/signals.py
(0 done, 2 configuration / precondition error, 99 stopped by SIGUSR1/SIGTERM, requeue).

This file is the entry point only: the stage plan is megaeeve/training/plan.py, the stage it drives
megaeeve/training/stage.py, and --dry-run megaeeve/training/dry_run.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaeeve.errors import ConfigError, one_line_errors
from megaeeve.log import logger
from megaeeve.stages import DEFAULT_STAGES
from megaeeve.training.config import load_run_config
from megaeeve.training.plan import read_ds_config

log = logger("megaeeve.train")  # not __name__: run as a script it is "__main__", outside the package logger


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
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
    return p


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = build_parser(prog)
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


def launch_env(local_rank: int | None) -> None:
    """Fill the torch.distributed env vars for SLURM srun or a plain single process, so DeepSpeed
    never falls back to MPI discovery (and the stage plan reads this process's rank and world from them)."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["LOCAL_RANK"] = env["SLURM_PROCID"], env.get("SLURM_LOCALID", "0")
        env.setdefault("WORLD_SIZE", env.get("SLURM_NTASKS", "1"))
    if local_rank is not None:
        env.setdefault("LOCAL_RANK", str(local_rank))
    for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                         ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        env.setdefault(key, default)


def dry_run_main(args: argparse.Namespace, ds_config: dict) -> int:
    """--dry-run: the checks and the per-stage table, for the run's stages or (--model without --config) the
    default stage table."""
    from megaeeve.training.dry_run import check_run, dry_run
    from megaeeve.training.engine import check_ds_config

    worlds = args.world_size or [int(os.environ["WORLD_SIZE"])]
    if args.config is None:
        check_ds_config(ds_config, str(args.ds_config))
        if args.stage is not None and args.stage not in DEFAULT_STAGES:
            raise ConfigError(f"no stage {args.stage} in the default stage table {list(DEFAULT_STAGES)}")
        numbers = [args.stage] if args.stage is not None else list(DEFAULT_STAGES)
        dry_run(args.model, [DEFAULT_STAGES[n] for n in numbers], ds_config, worlds)
        return 0
    cfg = load_run_config(args.config)
    numbers = [args.stage] if args.stage is not None else list(cfg.run_stages)
    check_run(cfg, ds_config, ds_path=args.ds_config, stages=numbers, worlds=worlds)
    dry_run(args.model or cfg.model, [cfg.stages[n] for n in numbers], ds_config, worlds)
    log.info("\nchecks passed: stage table, ds_config, model directory, data prefixes")
    return 0


@one_line_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    # DeepSpeed's ZeRO-3 collectives call torch APIs that warn on every step and every rank.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    args = parse_args(argv, prog)
    launch_env(args.local_rank)
    ds_config = read_ds_config(args.ds_config)
    if args.dry_run:
        return dry_run_main(args, ds_config)
    from megaeeve.training.plan import plan_stage
    from megaeeve.training.stage import run_stage

    plan = plan_stage(load_run_config(args.config), ds_config, ds_path=args.ds_config, number=args.stage,
                      overwrite=args.overwrite)
    return run_stage(plan)


if __name__ == "__main__":
    from megaeeve.training.collectives import exit_rank

    exit_rank(main())
