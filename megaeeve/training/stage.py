"""One planned stage from its input weights to final/ and DONE: the process group, the model, the engine, the loop,
checkpoints and the hand-off, each built from the stage plan (megaeeve/training/plan.py)."""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from megaeeve.errors import StageError
from megaeeve.log import STDERR, logger, setup as setup_logging
from megaeeve.training.checkpoint import DONE
from megaeeve.training.config import RunConfig
from megaeeve.training.plan import StagePlan
from megaeeve.training.signals import REQUEUE_EXIT_CODE, StopRequest

log = logger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_before(cfg: RunConfig, number: int) -> int:
    """Optimizer steps of the stages before `number` in run_stages (their DONE markers): the offset that
    makes TensorBoard and wandb steps continue across stages."""
    before = cfg.run_stages[: cfg.run_stages.index(number)]
    done = [cfg.stage_dir(n) / DONE for n in before]
    return sum(json.loads(p.read_text())["steps"] for p in done if p.is_file())


STALE_BUILD_LOCK_S = 600.0
"""A JIT build of an op (DeepSpeed's shared-memory collectives on CPU, fused Adam on a GPU) takes a minute or two."""


def stale_build_locks(older_than_s: float = STALE_BUILD_LOCK_S) -> dict[Path, float]:
    """Locks of DeepSpeed's op builds where torch builds them ($TORCH_EXTENSIONS_DIR when set, else its default
    root) last touched over `older_than_s` ago, with their ages in seconds.

    torch builds an op under a lock file that the builder deletes when it ends, and every other process waits for
    it to go (FileBaton), with no time limit and no message. A build killed mid-way leaves its lock behind, and
    every later run's ranks then hang in deepspeed.init_distributed; init_distributed refuses to start instead.
    Only the ops this accelerator's DeepSpeed can build count: another project's long build is none of ours."""
    from deepspeed.ops.op_builder.all_ops import ALL_OPS
    from torch.utils.cpp_extension import get_default_build_root

    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")  # torch then builds there only: <dir>/<op>/lock
    found = Path(chosen).glob("*/lock") if chosen else Path(get_default_build_root()).glob("*/*/lock")
    now, stale = time.time(), {}  # the default root: <root>/<python + accelerator>/<op>/lock
    for lock in sorted(f for f in found if f.parent.name in ALL_OPS):
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:  # its build ended meanwhile
            continue
        if age > older_than_s:
            stale[lock] = age
    return stale


def init_distributed(timeout_s: float) -> None:
    """deepspeed.init_distributed with the run's timeout; a rank that cannot reach its peers says where it looked,
    and a run refuses to start where a killed op build left its lock (which would make every rank wait forever)."""
    import deepspeed

    stale = stale_build_locks()
    if stale:
        lock, age = next(iter(stale.items()))
        raise StageError(f"{lock}: the lock of a torch extension build, last touched {age / 60:.0f} minutes ago; a "
                         f"build that was killed left it, and DeepSpeed would wait for it forever. If no build is "
                         f"running, delete it: rm {' '.join(map(str, stale))}")
    try:
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
        env = os.environ
        raise StageError(f"rank {env.get('RANK')} of {env.get('WORLD_SIZE')} could not reach its peers at "
                         f"MASTER_ADDR={env.get('MASTER_ADDR')} MASTER_PORT={env.get('MASTER_PORT')} within "
                         f"{timeout_s:g} s (training.dist_timeout_s): {str(e).splitlines()[0]}") from None


def run_stage(plan: StagePlan) -> int:
    """Train the planned stage on this rank; returns the exit code (0 done, REQUEUE_EXIT_CODE stopped by a signal)."""
    import torch.distributed as dist

    from megaeeve.model.checkpoint import load_split_model
    from megaeeve.model.stage_modules import add_stage_modules
    from megaeeve.training import checkpoint as ckpt
    from megaeeve.training.data import stage_data
    from megaeeve.training.engine import freeze_for_stage, initialize_engine
    from megaeeve.training.loop import LoopSettings, LoopState, evaluate, train
    from megaeeve.training.metrics import Metrics, MetricsSettings
    from megaeeve.training.objectives import stage_objective
    from megaeeve.training.profiling import StepProfiler
    from megaeeve.training.throughput import flops_per_token, peak_tflops

    cfg, stage, number, t = plan.cfg, plan.stage, plan.number, plan.cfg.training
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
        torch.use_deterministic_algorithms(True)
    stop = StopRequest().install()
    init_distributed(t.dist_timeout_s)
    setup_logging(plan.rank, plan.world)
    if plan.completed:  # --overwrite: start the stage from scratch
        dist.barrier()
        if plan.is_main:
            shutil.rmtree(plan.stage_dir)
        dist.barrier()
    for warning in plan.warnings if plan.is_main else ():  # every rank found the same: say it once
        log.warning(warning)
    seed_everything(cfg.seed + number)

    # Import before zero.Init patches torch.Tensor.__new__: torch._dynamo (pulled in by
    # transformers.modeling_utils) fails to import while that patch is active.
    import torch._dynamo  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    model = load_split_model(plan.src_dir, plan.meta, ds_config=plan.ds_config, dtype=plan.dtype,
                             attn_implementation=t.attn_implementation)
    add_stage_modules(model, stage, plan.src_dir)
    freeze_for_stage(model, plan.roles, stage)
    if t.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine = initialize_engine(model, plan.roles, stage=stage, ds_config=plan.ds_config, total_steps=plan.steps)
    if plan.dtype != torch.float32:
        ckpt.load_fp32_masters(model, plan.src_dir)
    objective = stage_objective(plan)
    data = stage_data(cfg, stage, plan.steps * plan.batch.global_batch, plan.meta.base_vocab_size)

    ckpt_dir = plan.stage_dir / "checkpoints"
    resumed = ckpt.resume(engine, ckpt_dir, plan.rank)
    state = LoopState(*resumed) if resumed else LoopState(0, 0)
    metrics = Metrics(MetricsSettings(
        stage_dir=plan.stage_dir, stage=number, total_steps=plan.steps, start_step=state.step,
        step_offset=steps_before(cfg, number), report_to=t.report_to, progress_bar=t.progress_bar,
        run_name=cfg.run_dir.name, wandb_project=t.wandb_project), plan.is_main)
    if resumed:
        log.info(f"stage {number}: resumed at step {state.step} ({state.consumed_samples} samples consumed)",
                 extra=STDERR)

    def save(s: LoopState) -> None:
        ckpt.save(engine, ckpt_dir, step=s.step, consumed_samples=s.consumed_samples, keep=t.keep_checkpoints,
                  rank=plan.rank, world=plan.world)

    settings = LoopSettings(
        rank=plan.rank, world=plan.world, total_steps=plan.steps, batch=plan.batch, seq_length=cfg.seq_length,
        base_vocab_size=plan.meta.base_vocab_size,
        flops_per_token=flops_per_token(model, plan.roles, cfg.seq_length, plan.trainable),
        peak_tflops=peak_tflops(plan.device, t.peak_tflops), log_every=t.log_every, eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every,
    )
    profiler = StepProfiler(t.profile_steps, plan.stage_dir / "profile", plan.rank)
    try:
        if not train(engine, data, state=state, s=settings, metrics=metrics, stop=stop, save=save,
                     objective=objective, profiler=profiler):
            log.info(f"stage {number}: stopped by signal {stop.signum} at step {state.step}; checkpoint saved, "
                     f"exit {REQUEUE_EXIT_CODE} (requeue)", extra=STDERR)
            return REQUEUE_EXIT_CODE
        if ckpt.latest_tag(ckpt_dir) != f"step{state.step:08d}":
            save(state)
        final_eval = evaluate(engine, data, settings, objective)
        metrics.log({"kind": "eval", "step": state.step, **final_eval})
        ckpt.export_final(model, plan.src_dir, out_dir=plan.stage_dir / "final",
                          shard_bytes=t.handoff_shard_mb * 2**20, rank=plan.rank, world=plan.world)
        if plan.is_main:
            ckpt.write_done(plan.stage_dir, {"stage": number, "steps": state.step,
                                             "consumed_samples": state.consumed_samples, "source": str(plan.src_dir),
                                             "trainable": list(stage.trainable), **final_eval})
        dist.barrier()
    finally:
        metrics.close()
    return 0
