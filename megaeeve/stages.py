"""The seven EEVE training stages, as data.

This is the one place where a stage's trainable set is decided. Each stage names the parameter
*roles* it trains (roles come from `megaeeve.model.parameter_roles`, which splits the input
embedding and the lm_head into base rows ("original") and new rows ("added")), plus default
budget and learning rate. A run config (RUN.yaml `stages:`) overrides any field per stage, adds
stages with their own numbers, or replaces the whole table (`default_stages: false`): no code
change is needed for a custom schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from megaeeve.typed import coerce, field_hints

ROLES = ("input_original", "input_added", "output_original", "output_added", "body")  # the model's own parameters
LORA = "lora"  # adapters a LoRA stage adds (LoraSpec)
OUTPUT_MAP = "output_map"  # the shared map of the new output rows a stage adds (OutputMapSpec)
EMBEDDING_ROLES = frozenset(ROLES) - {"body"}
ADDED_ROLES = frozenset({"input_added", "output_added"})  # the new tokens' rows (and the new lm_head bias)
BASE_ROLES = tuple(r for r in ROLES if r not in ADDED_ROLES)  # the base model's own parameters: all but the new rows
OBJECTIVES = ("lm", "distill", "mixed")  # megaeeve/training/objectives.py


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (PEFT) on the body's `target_modules` for a stage that trains role `lora` instead of
    `body`; merged into the weights at the stage's hand-off, so the next stage and the export see plain
    weights."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    quantize: str | None = None  # "nf4" would be QLoRA: not supported with ZeRO-3 partitioned weights here

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"lora: r must be >= 1, alpha > 0 and dropout in [0, 1), got {self}")
        if not self.target_modules:
            raise ValueError("lora: target_modules is empty")
        if self.quantize is not None:
            raise ValueError(f"lora.quantize: {self.quantize!r} (QLoRA) is not supported: bitsandbytes' 4-bit weights "
                             "cannot be ZeRO-3 partitions here; use plain LoRA (quantize: null)")


@dataclass(frozen=True)
class OutputMapSpec:
    """The new tokens' output rows trained through a map every new token shares, for a stage that trains role
    `output_map`: row_t + x_t A B^T, x_t the stage input's new input row of t at unit norm, A [hidden, rank] random
    and B [hidden, rank] zero (the stage starts from its input exactly). A free row learns only from the positions
    where its token is the target or a strong competitor; A and B learn from every position, which features of a
    new token the final hidden state selects (the same map `megaeeve extend --fit-output-rank` fits at stage 0).
    Folded into the rows at the stage's hand-off, as LoRA merges: the next stage and the export see plain rows."""

    rank: int = 16
    lr_scale: float = 1.0  # A and B train at the stage's lr times this

    def __post_init__(self) -> None:
        if self.rank < 1 or self.lr_scale <= 0:
            raise ValueError(f"output_map: rank must be >= 1 and lr_scale > 0, got {self}")


@dataclass(frozen=True)
class DistillSpec:
    """Chunk-likelihood distillation from the base model, for objectives `distill` and `mixed`
    (megaeeve/training/objectives.py)."""

    weight: float = 0.5  # mixed: loss = (1 - weight) * lm + weight * (distill + hidden_weight * hidden)
    temperature: float = 100.0  # chunk probabilities are compared as p ** (1 / temperature) (ALM's default: 100)
    hidden_weight: float = 0.0  # the hidden-state term at chunk ends (0: not computed)

    def __post_init__(self) -> None:
        if not 0 < self.weight < 1 or self.temperature <= 0 or self.hidden_weight < 0:
            raise ValueError(f"distill: weight must be in (0, 1), temperature > 0 and hidden_weight >= 0, got {self}")


@dataclass(frozen=True)
class Stage:
    """One stage: what trains, for how long, how fast."""

    number: int
    description: str
    trainable: tuple[str, ...]
    lr: float
    steps: int | None = 200
    tokens: int | None = None  # budget in tokens; wins over `steps` when set
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # body matrices (biases and norms never decay)
    embedding_weight_decay: float = 0.0  # embedding / lm_head rows: none unless asked
    # The new tokens' rows (and a new lm_head bias) train at `lr` times this. 10 was worse than 1 in a short
    # all-parameter run (bench/RESULTS.md, "Break-even", method (h)): an option to try, not a recommendation.
    added_rows_lr_scale: float = 1.0
    data_weights: Mapping[str, float] | None = None  # per dataset name; None: the run's weights
    lora: LoraSpec | None = None  # adapters for role `lora` (see LoraSpec)
    output_map: OutputMapSpec | None = None  # the shared map for role `output_map` (see OutputMapSpec)
    objective: str = "lm"  # one of OBJECTIVES: next-token loss, distillation from the base model, or both
    distill: DistillSpec = DistillSpec()  # settings of `distill` and `mixed`

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage {self.number}: objective {self.objective!r}; objectives are {list(OBJECTIVES)}")
        unknown = set(self.trainable) - {*ROLES, LORA, OUTPUT_MAP}
        if unknown:
            raise ValueError(f"stage {self.number}: unknown role(s) {sorted(unknown)}; roles are "
                             f"{[*ROLES, LORA, OUTPUT_MAP]}")
        if not self.trainable:
            raise ValueError(f"stage {self.number}: trains nothing (empty `trainable`)")
        if (LORA in self.trainable) != (self.lora is not None):
            raise ValueError(f"stage {self.number}: `lora` settings and the `lora` role in `trainable` go together")
        if (OUTPUT_MAP in self.trainable) != (self.output_map is not None):
            raise ValueError(f"stage {self.number}: `output_map` settings and the `output_map` role in `trainable` go "
                             "together")
        if self.lora is not None and "body" in self.trainable:
            raise ValueError(f"stage {self.number}: trains the body both fully and through LoRA; choose one")
        if self.lr <= 0 or self.added_rows_lr_scale <= 0:
            raise ValueError(f"stage {self.number}: lr and added_rows_lr_scale must be > 0, got {self.lr} and "
                             f"{self.added_rows_lr_scale}")
        if (self.steps is None or self.steps <= 0) and (self.tokens is None or self.tokens <= 0):
            raise ValueError(f"stage {self.number}: needs a budget: `steps` > 0 or `tokens` > 0")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"stage {self.number}: warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")


# EEVE (Kim et al. 2024), seven stages. Embedding-only stages use a higher learning rate than the
# stages that move transformer weights.
DEFAULT_STAGES: dict[int, Stage] = {
    s.number: s
    for s in (
        Stage(1, "new input embedding rows", ("input_added",), lr=2e-4),
        Stage(2, "new output embedding rows", ("output_added",), lr=2e-4),
        Stage(3, "new input + new output rows", ("input_added", "output_added"), lr=1e-4),
        Stage(4, "all output rows", ("output_original", "output_added"), lr=5e-5),
        Stage(5, "new input rows + all output rows", ("input_added", "output_original", "output_added"), lr=5e-5),
        Stage(6, "all parameters", ROLES, lr=2e-5),
        Stage(7, "transformer layers only", ("body",), lr=2e-5),
    )
}

def cosine(progress: float, floor: float) -> float:
    """The cosine decay's lr multiplier at `progress` in [0, 1]: 1 at the start, `floor` at the end. One formula for a
    stage's own decay (megaeeve/training/engine.py) and a cooldown spread over several stages (cooldown_lrs)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def cooldown_lrs(stages: int, cooldown: int, floor: float) -> list[tuple[float, float]]:
    """Each stage's (peak, end) lr as a fraction of the run's lr for warmup-stable-decay over the stages: the stages
    before the last `cooldown` hold the peak, the last `cooldown` follow one cosine from it down to `floor`, each
    stage the piece of it that falls in its steps (stages equal in steps). Each stage is a fresh engine, so it still
    warms up to its peak (Adam starts from zero moments). [] for `cooldown` 0: every stage decays on its own."""
    if not cooldown:
        return []
    if not 0 < cooldown <= stages:
        raise ValueError(f"cooldown_stages {cooldown}: must lie in 1..{stages}")
    return [(1.0, 1.0)] * (stages - cooldown) + [(cosine(j / cooldown, floor), cosine((j + 1) / cooldown, floor))
                                                 for j in range(cooldown)]


# The short run's recipe that came level with the base model's Korean bits/char on SmolLM2-135M within 107,520
# training tokens (bench/RESULTS.md, "Break-even", method (o)): the new tokens' rows stay where `megaeeve extend`'s
# fitted init put them, the base rows and the body train at 3e-4, stages 1-5 hold the peak lr after their warmup and
# 6-7 share one cosine cooldown to 10%. A budget's choice: over the card's billions of tokens the new rows must learn.
FROZEN_NEW_WSD: dict[int, Stage] = {
    n: Stage(n, "base rows + body, " + ("peak lr" if start == end else "cooldown"), BASE_ROLES, lr=3e-4 * start,
             warmup_ratio=0.1, min_lr_ratio=end / start)
    for n, (start, end) in enumerate(cooldown_lrs(len(DEFAULT_STAGES), 2, 0.1), 1)
}

# Preset schedules (RUN.yaml `schedule`): EEVE's stages, the same with the new rows' stages (1-3) taught by
# distilling the base model's likelihoods into them (objective `distill`, megaeeve/training/objectives.py), or the
# short run's warmup-stable-decay with the new rows frozen.
SCHEDULES: dict[str, dict[int, Stage]] = {
    "eeve": DEFAULT_STAGES,
    "eeve+distill": {n: dataclasses.replace(s, objective="distill") if n <= 3 else s for n, s in DEFAULT_STAGES.items()},
    "frozen-new-wsd": FROZEN_NEW_WSD,
}

_FIELDS = {f.name for f in dataclasses.fields(Stage)} - {"number"}


def stage_table(overrides: Mapping[int, Mapping[str, Any]] | None = None, use_defaults: bool = True,
                schedule: str = "eeve") -> dict[int, Stage]:
    """The stage table for a run: the preset `schedule` (unless `use_defaults` is False) with `overrides` applied.

    A stage number absent from the defaults is a custom stage and must give at least
    `trainable` and `lr`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: {schedule!r}; presets are {list(SCHEDULES)}")
    table = dict(SCHEDULES[schedule]) if use_defaults else {}
    for number, fields in (overrides or {}).items():
        number = coerce(number, int, "stages")
        if not isinstance(fields, Mapping):
            raise ValueError(f"stages.{number}: expected a mapping of settings, got {fields!r}")
        unknown = set(fields) - _FIELDS
        if unknown:
            raise ValueError(f"stage {number}: unknown setting(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}")
        hints = field_hints(Stage)
        fields = {k: coerce(v, hints[k], f"stages.{number}.{k}") for k, v in fields.items()}
        if number in table:
            table[number] = dataclasses.replace(table[number], **fields)
        else:
            missing = {"trainable", "lr"} - set(fields)
            if missing:
                raise ValueError(f"stage {number} is not a default stage; it must set {sorted(missing)}")
            fields.setdefault("description", f"custom stage {number}")
            table[number] = Stage(number, **fields)
    return dict(sorted(table.items()))


def trainable_names(roles: Mapping[str, str], stage: Stage) -> list[str]:
    """Parameter names (from a name -> role map) that `stage` trains, in the map's order."""
    missing = set(stage.trainable) - set(roles.values())
    if missing:
        raise ValueError(
            f"stage {stage.number} trains role(s) {sorted(missing)} but the model has no parameter with them "
            f"(roles present: {sorted(set(roles.values()))})"
        )
    return [name for name, role in roles.items() if role in stage.trainable]
