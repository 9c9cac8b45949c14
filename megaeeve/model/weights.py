"""A model directory's weights: one safetensors file, or shards with an index, read alike.

    split_model.safetensors                                  one file (stage-0, small models)
    split_model-00001-of-00004.safetensors ... + split_model.safetensors.index.json
                                                             shards (the hand-off of a large model)

The sharded layout is Hugging Face's (an index with `weight_map` and `metadata.total_size`) under
megaeeve's own file name, so plain transformers still refuses a split directory. Shards let the
hand-off write a 2.8B or 10.8B model without any rank holding more than one shard: each shard has
an owner rank that assembles and writes it while the others stream past.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

WEIGHTS = "split_model"
SINGLE_FILE = f"{WEIGHTS}.safetensors"
INDEX_FILE = f"{WEIGHTS}.safetensors.index.json"


def shard_name(k: int, n: int) -> str:
    return f"{WEIGHTS}-{k + 1:05d}-of-{n:05d}.safetensors"


def weight_files(model_dir: Path) -> list[str]:
    """The file names holding a directory's weights (index first when sharded)."""
    if (model_dir / INDEX_FILE).is_file():
        index = json.loads((model_dir / INDEX_FILE).read_text(encoding="utf-8"))
        return [INDEX_FILE, *sorted(set(index["weight_map"].values()))]
    return [SINGLE_FILE]


def has_weights(model_dir: Path) -> bool:
    return (model_dir / INDEX_FILE).is_file() or (model_dir / SINGLE_FILE).is_file()


class Weights:
    """Lazy reads of a model directory's tensors, whichever layout: `keys()`, `get_slice`, `get_tensor`."""

    def __init__(self, model_dir: Path, stack: contextlib.ExitStack) -> None:
        model_dir = Path(model_dir)
        if (model_dir / INDEX_FILE).is_file():
            weight_map = json.loads((model_dir / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        elif (model_dir / SINGLE_FILE).is_file():
            with safe_open(str(model_dir / SINGLE_FILE), framework="pt") as f:
                weight_map = {k: SINGLE_FILE for k in f.keys()}
        else:
            raise FileNotFoundError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")
        self.path = model_dir
        self._files = {name: stack.enter_context(safe_open(str(model_dir / name), framework="pt"))
                       for name in sorted(set(weight_map.values()))}
        self._where = weight_map

    def keys(self) -> list[str]:
        return list(self._where)

    def get_slice(self, key: str):
        return self._files[self._where[key]].get_slice(key)

    def get_tensor(self, key: str) -> torch.Tensor:
        return self._files[self._where[key]].get_tensor(key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(self.get_slice(k).get_shape()) for k in self._where}


@contextlib.contextmanager
def open_weights(model_dir: str | Path) -> Iterator[Weights]:
    with contextlib.ExitStack() as stack:
        yield Weights(Path(model_dir), stack)


def load_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory in memory (export, tests; not the trainer's path)."""
    with open_weights(model_dir) as w:
        return {k: w.get_tensor(k) for k in w.keys()}


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Tensor names, in order, cut into shards of at most `max_bytes` (a larger tensor is a shard alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def write_index(out_dir: Path, shards: list[list[str]], total_bytes: int) -> None:
    from megaeeve.atomic import write_json

    weight_map = {name: shard_name(k, len(shards)) for k, names in enumerate(shards) for name in names}
    write_json(out_dir / INDEX_FILE, {"metadata": {"total_size": total_bytes, "format": "pt"},
                                      "weight_map": weight_map})
