"""A stage's data: the weighted train blend and one held-out set per dataset (for per-dataset eval loss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megaeeve.data.blending import BlendedDataset, blended_dataset, samples_per_dataset
from megaeeve.data.gpt_dataset import PackedDataset, document_split, packed_dataset
from megaeeve.errors import DataError
from megaeeve.stages import Stage
from megaeeve.training.config import RunConfig


@dataclass
class StageData:
    names: list[str]  # dataset names, index = the blend's dataset number
    train: BlendedDataset
    valid: dict[str, PackedDataset]


def open_prefix(prefix: Path):
    """The memory-mapped dataset of a prefix, validated (header against both file sizes)."""
    from megaeeve.data.indexed import IndexedDataset

    if not Path(f"{prefix}.idx").is_file() or not Path(f"{prefix}.bin").is_file():
        raise DataError(f"dataset prefix {prefix}: {prefix}.bin / {prefix}.idx not found")
    return IndexedDataset(str(prefix))


def stage_data(cfg: RunConfig, stage: Stage, num_samples: int, base_vocab_size: int) -> StageData:
    """Build (or load from the index cache) the blend of `num_samples` training samples.

    Each stage shuffles with its own seed (run seed + stage number), so stages see the data in
    different orders; the held-out samples are the same for every stage.
    """
    weights = dict(stage.data_weights) if stage.data_weights else {s.name: s.weight for s in cfg.data.sources}
    sources = [s for s in cfg.data.sources if weights.get(s.name, 0) > 0]
    if not sources:
        raise DataError(f"{cfg.path}: stage {stage.number} gives every dataset weight 0")
    cache_dir = cfg.data.cache_dir or cfg.run_dir / "index-cache"
    vocab = cfg.data.base_vocab_size or base_vocab_size
    w = [weights[s.name] for s in sources]
    train_sets, valid = [], {}
    for k, (source, n) in enumerate(zip(sources, samples_per_dataset(w, num_samples))):
        docs = open_prefix(source.prefix)
        train_docs, valid_docs = document_split(len(docs), cfg.data.valid_fraction, str(source.prefix))
        common = dict(seq_length=cfg.seq_length, cache_dir=cache_dir, base_vocab_size=vocab)
        train_sets.append(packed_dataset(docs, source.prefix, documents=train_docs, split="train", num_samples=n,
                                         seed=cfg.seed + stage.number + 7919 * k,
                                         new_token_bias=cfg.data.new_token_bias, **common))
        valid[source.name] = packed_dataset(docs, source.prefix, documents=valid_docs, split="valid",
                                            num_samples=cfg.training.eval_samples, seed=cfg.seed, **common)
    train = blended_dataset(train_sets, w, size=num_samples, cache_dir=cache_dir,
                            description={"datasets": [str(s.prefix) for s in sources], "seed": cfg.seed + stage.number,
                             "seq_length": cfg.seq_length, "bias": cfg.data.new_token_bias})
    return StageData([s.name for s in sources], train, valid)
