"""RUN.yaml: what a multi-stage run trains on, where it writes, and per-stage overrides.

The DeepSpeed side (ZeRO stage, precision, micro batch, accumulation, clipping, optimizer betas)
lives in the ds_config JSON; everything about the run (model, data, budget, schedule) lives here.
Validation names the file and the offending key, so a bad config fails before any process spins up
a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from megaeeve.errors import ConfigError, ConfigTypeError
from megaeeve.stages import Stage, stage_table
from megaeeve.training.metrics import SINKS
from megaeeve.typed import build, coerce


@dataclass(frozen=True)
class DataSource:
    """One dataset prefix (P.bin / P.idx) with its blend weight; `name` labels its eval loss."""

    prefix: Path
    weight: float
    name: str


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[DataSource, ...]
    valid_fraction: float = 0.01  # fraction of each prefix's documents held out for eval (chosen by a hash of their index)
    new_token_bias: float = 0.0  # card step 8: 0 = plain epochs; b > 0 samples docs with weight 1 + b * new-token share
    base_vocab_size: int | None = None  # ids >= this are "new"; default: read from the model directory
    cache_dir: Path | None = None  # index cache; default run_dir/index-cache


@dataclass(frozen=True)
class TrainingConfig:
    RENAMED: ClassVar[Mapping[str, str]] = {  # keys of earlier releases -> what replaced them
        "tensorboard": "`report_to: [tensorboard]` for `tensorboard: true`, `report_to: []` for false",
    }
    MINIMUM: ClassVar[Mapping[str, int]] = {  # smaller values would fail mid-stage (log_every 0 divides by zero)
        "log_every": 1, "eval_every": 0, "eval_samples": 1, "checkpoint_every": 0, "keep_checkpoints": 0,
        "handoff_shard_mb": 1,
    }

    log_every: int = 1
    eval_every: int = 0  # 0: eval only at the end of a stage
    eval_samples: int = 32  # per dataset
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # the newest complete ones a stage keeps; 0: all of them
    activation_checkpointing: bool = False
    report_to: tuple[str, ...] = ()  # metric sinks besides metrics.jsonl: tensorboard, wandb (optional extras)
    wandb_project: str = "megaeeve"
    progress_bar: bool = True  # a tqdm bar on a terminal, plain log lines otherwise (SLURM .out files)
    attn_implementation: str = "sdpa"  # transformers' attention kernel: eager, sdpa, flash_attention_2
    deterministic: bool = False  # deterministic kernels (and cuBLAS workspace): bitwise-exact resume on a GPU
    dist_timeout_s: float = 300.0  # rendezvous and collective timeout: a rank whose peers are gone stops
    peak_tflops: float | None = None  # the device's dense 16-bit peak for MFU (default: known GPUs by name)
    handoff_shard_mb: int = 2048  # final/ is written in shards of at most this size, one owner rank each
    profile_steps: tuple[int, ...] = ()  # optimizer steps (1-based) torch.profiler watches, each rank: STAGE_DIR/profile/


@dataclass(frozen=True)
class RunConfig:
    path: Path
    run_dir: Path
    model: Path  # stage-0 directory (tools/extend_model.py)
    data: DataConfig
    seq_length: int
    seed: int
    training: TrainingConfig
    stages: dict[int, Stage]
    run_stages: tuple[int, ...]  # which stages run, in order; stage k starts from the one before it

    def previous_stage(self, number: int) -> int | None:
        """The stage whose final/ weights `number` starts from (None: the stage-0 model)."""
        if number not in self.run_stages:
            raise ConfigError(f"{self.path}: stage {number} is not in run_stages {list(self.run_stages)}")
        i = self.run_stages.index(number)
        return self.run_stages[i - 1] if i else None

    def stage_dir(self, number: int) -> Path:
        return self.run_dir / f"stage-{number}"


def _build(cls: type, values: Any, key: str, where: str) -> Any:
    """A typed config section (megaeeve.typed); errors name the file and the dotted key."""
    try:
        return build(cls, values, key)
    except ConfigTypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _value(value: Any, hint: Any, key: str, where: str) -> Any:
    try:
        return coerce(value, hint, key)
    except ConfigTypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _require(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in raw or raw[key] is None:
        raise ConfigError(f"{where}: missing required key `{key}`")
    return raw[key]


def _resolve(base: Path, p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _data(raw: Mapping[str, Any], base: Path, where: str) -> DataConfig:
    if isinstance(raw, list):  # shorthand: `data:` is just the list of sources
        raw = {"sources": raw}
    raw = dict(raw)
    items = _require(raw, "sources", f"{where}: data")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: data.sources must be a non-empty list of {{prefix, weight, name}}")
    sources = []
    for i, item in enumerate(items):
        w = f"{where}: data.sources[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{w}: expected a mapping with `prefix` and `weight`, got {item!r}")
        prefix = _resolve(base, _require(item, "prefix", w))
        weight = _value(item.get("weight", 1.0), float, f"data.sources[{i}].weight", where)
        if weight <= 0:
            raise ConfigError(f"{w}: weight must be > 0, got {weight}")
        sources.append(DataSource(prefix, weight, str(item.get("name", prefix.name))))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: data source names must be unique, got {names}")
    raw["sources"] = tuple(sources)
    if raw.get("cache_dir") is not None:
        raw["cache_dir"] = _resolve(base, raw["cache_dir"])
    cfg = _build(DataConfig, raw, "data", where)
    if not 0 < cfg.valid_fraction < 1:
        raise ConfigError(f"{where}: data.valid_fraction must be in (0, 1), got {cfg.valid_fraction}")
    if cfg.new_token_bias < 0:
        raise ConfigError(f"{where}: data.new_token_bias must be >= 0, got {cfg.new_token_bias}")
    return cfg


ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def _training(raw: Mapping[str, Any], where: str) -> TrainingConfig:
    cfg = _build(TrainingConfig, raw, "training", where)
    if cfg.attn_implementation not in ATTENTION:
        raise ConfigError(f"{where}: training.attn_implementation: {cfg.attn_implementation!r} is not one of "
                          f"{list(ATTENTION)}")
    unknown = set(cfg.report_to) - set(SINKS)
    if unknown:
        raise ConfigError(f"{where}: training.report_to: unknown sink(s) {sorted(unknown)}; known: {list(SINKS)}")
    for key, low in cfg.MINIMUM.items():
        if getattr(cfg, key) < low:
            raise ConfigError(f"{where}: training.{key} must be >= {low}, got {getattr(cfg, key)}")
    if cfg.peak_tflops is not None and not cfg.peak_tflops > 0:
        raise ConfigError(f"{where}: training.peak_tflops must be > 0 (or left out), got {cfg.peak_tflops}")
    if any(step < 1 for step in cfg.profile_steps):
        raise ConfigError(f"{where}: training.profile_steps counts optimizer steps from 1, got {list(cfg.profile_steps)}")
    if not cfg.dist_timeout_s > 0:
        raise ConfigError(f"{where}: training.dist_timeout_s must be > 0, got {cfg.dist_timeout_s!r}")
    return cfg


def parse_run_config(raw: Mapping[str, Any], path: Path) -> RunConfig:
    """Validate a parsed RUN.yaml mapping; relative paths resolve against the file's directory."""
    where = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    known = {"run_dir", "model", "data", "seq_length", "seed", "training", "schedule", "stages", "default_stages",
             "run_stages"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    base = path.absolute().parent  # as the user named it: a symlinked RUN.yaml resolves beside the link
    seq_length = _value(_require(raw, "seq_length", where), int, "seq_length", where)
    if seq_length < 1:
        raise ConfigError(f"{where}: seq_length must be >= 1, got {seq_length}")
    overrides = raw.get("stages") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: `stages` must map a stage number to its settings")
    try:
        table = stage_table(overrides, use_defaults=_value(raw.get("default_stages", True), bool, "default_stages", where),
                            schedule=_value(raw.get("schedule", "eeve"), str, "schedule", where))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    run_stages = _value(raw.get("run_stages") or list(table), tuple[int, ...], "run_stages", where)
    missing = [s for s in run_stages if s not in table]
    if missing:
        raise ConfigError(f"{where}: run_stages names stage(s) {missing} absent from the stage table {list(table)}")
    data = _data(_require(raw, "data", where), base, where)
    for s in table.values():
        if s.data_weights:
            bad = set(s.data_weights) - {d.name for d in data.sources}
            if bad:
                raise ConfigError(f"{where}: stage {s.number} data_weights names unknown dataset(s) {sorted(bad)}")
    return RunConfig(
        path=path,
        run_dir=_resolve(base, _require(raw, "run_dir", where)),
        model=_resolve(base, _require(raw, "model", where)),
        data=data,
        seq_length=seq_length,
        seed=_value(raw.get("seed", 1234), int, "seed", where),
        training=_training(raw.get("training") or {}, where),
        stages=table,
        run_stages=run_stages,
    )


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"run config {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    return parse_run_config(raw, path)


@dataclass(frozen=True)
class BatchShape:
    """Batch sizes from the ds_config, checked against the world size."""

    micro: int
    grad_accum: int
    world: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.grad_accum * self.world


def batch_shape(ds_config: Mapping[str, Any], world: int, where: str) -> BatchShape:
    """Read micro batch / accumulation from a ds_config, filling whichever DeepSpeed can infer."""
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    accum = ds_config.get("gradient_accumulation_steps")
    total = ds_config.get("train_batch_size")
    if micro is None:
        raise ConfigError(f"{where}: set train_micro_batch_size_per_gpu")
    if accum is None:
        accum = total // (micro * world) if total else 1
    if total is not None and total != micro * accum * world:
        raise ConfigError(
            f"{where}: train_batch_size {total} != micro {micro} x accumulation {accum} x world size {world}"
        )
    return BatchShape(int(micro), int(accum), world)

