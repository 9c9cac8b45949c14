"""--dry-run: everything a stage checks before it loads a model, and each stage's trainable parameters and
optimizer state per rank, planned on the meta device: no weights are read and nothing is distributed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megaeeve.errors import DataError
from megaeeve.log import logger
from megaeeve.stages import Stage
from megaeeve.training.config import RunConfig, batch_shape
from megaeeve.training.engine import check_ds_config
from megaeeve.training.plan import budget_warnings, stage_plans

log = logger(__name__)


def check_run(cfg: RunConfig, ds_config: dict, *, ds_path: Path, stages: list[int], worlds: list[int]) -> None:
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
        log.warning(warning)
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


def dry_run(model_dir: Path, stages: list[Stage], ds_config: dict, worlds: list[int]) -> None:
    """Per stage: trainable parameters (by role, with counts) and optimizer-state bytes per rank for each
    world size."""
    plans = stage_plans(model_dir, stages, ds_config)
    log.info(f"model {model_dir}: {plans[0]['total']:,} parameters; planned for {', '.join(map(str, worlds))} rank(s)")
    for stage, plan in zip(stages, plans):
        n, total, opt = plan["trainable"], plan["total"], plan["optimizer_bytes"]
        log.info(f"\nstage {stage.number}: {stage.description}  (lr {stage.lr:g}, budget "
                 f"{f'{stage.tokens:,} tokens' if stage.tokens else f'{stage.steps} steps'}, objective "
                 f"{stage.objective})")
        for role, members in plan["roles"].items():
            listing = ", ".join(f"{x} {shape}" for x, shape in members[:4])
            more = f", ... ({len(members)} tensors)" if len(members) > 4 else ""
            log.info(f"  {role:16s} {plan['role_numel'][role]:>15,}  {listing}{more}")
        log.info(f"  trainable {n:,} of {total:,} ({100 * n / total:.2f}%); frozen {total - n:,}")
        per_rank = "; ".join(f"{world} ranks: {_size(opt / world)} per rank" for world in worlds)
        log.info(f"  optimizer state (Adam moments + fp32 master): {_size(opt)} in all; {per_rank}")


def _size(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"
