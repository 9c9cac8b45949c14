"""The extended model: split embeddings, EEVE initialisation, model directories, export.

Interfaces the trainer relies on:

- ``parameter_roles(model) -> dict[str, str]``: every parameter name -> one of "input_original", "input_added",
  "output_original", "output_added", "lora", "output_map", "body" (only tensors of the model directory's weights,
  LoRA adapters and a stage's output map; any other parameter is a RoleError). ``bias_original`` goes with
  output_original, ``bias_added`` with output_added. A model without new tokens (num_added = 0) has no ``added``
  parameters, hence no input_added / output_added roles. Padding rows (vocab rounded up to a multiple) are not
  parameters at all: the embedding returns zeros for padding ids and the head returns -inf logits for them (see
  split.py), so no stage can train or predict them.
- Model directory (stage-0 output and each stage's final/): ``split_model.safetensors`` with the split
  names (``<input>.original``, ``<input>.added``, ``<lm_head>.original``, ``<lm_head>.added``
  [, ``<lm_head>.bias_original``, ``<lm_head>.bias_added``] + body weights), ``config.json`` (HF,
  vocab_size = padded size, untied), ``megaeeve_model.json`` (ModelMeta), ``new_token_pieces.json``
  (each new id's base ids: ``read_pieces``, pieces.py), the expanded tokenizer's files and
  ``base_tokenizer/tokenizer.json``.
- ``load_model_dir(dir, ds_config=None, dtype=torch.float32) -> nn.Module``: builds the split model
  (eval mode); with ZeRO stage 3 in ds_config, under deepspeed.zero.Init, each rank filling only its
  own partitions from slices of the safetensors file (partition.py).
- Weights (weights.py): one ``split_model.safetensors`` or shards with an index, read alike by
  ``open_weights(dir)`` / ``load_weights(dir)``; a stage's hand-off writes shards from several ranks.
- ``read_model_meta(dir) -> ModelMeta``.
- ``extend_model(...)`` (tools/extend_model.py) and ``export_hf(in_dir, out_dir)`` (tools/export_hf.py).
"""

from __future__ import annotations

from torch import nn

from megaeeve.errors import RoleError
from megaeeve.model.checkpoint import SOURCE_WEIGHTS, ModelMeta, load_model_dir, read_model_meta
from megaeeve.model.export import export_hf
from megaeeve.model.extend import extend_model
from megaeeve.model.lora import file_name, lora_roles
from megaeeve.model.output_map import PARAMS as MAP_PARAMS
from megaeeve.model.split import SplitEmbedding, SplitLMHead
from megaeeve.stages import OUTPUT_MAP, ROLES


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Role of every parameter of a split model (keys as in model.named_parameters()): by module class,
    split embedding rows, LoRA adapters (lora.py), a stage's output map (output_map.py), and `body` for the rest
    of the model directory's weights.

    Roles fail closed: a parameter outside those (a module injected after the model was built) raises
    RoleError naming it, rather than training or freezing as body without a word."""
    roles = dict(lora_roles(model))
    for prefix, module in model.named_modules():
        side = "input" if isinstance(module, SplitEmbedding) else "output" if isinstance(module, SplitLMHead) else None
        if side is None:
            continue
        for name, _ in module.named_parameters(recurse=False):
            if side == "output" and name in MAP_PARAMS:  # a stage's shared map (output_map.py)
                roles[f"{prefix}.{name}" if prefix else name] = OUTPUT_MAP
                continue
            part = "original" if name.endswith("original") else "added"
            roles[f"{prefix}.{name}" if prefix else name] = f"{side}_{part}"
    if not {"input_original", "output_original"} <= set(roles.values()):
        raise ValueError("model has no split input embedding and lm_head; load it with load_model_dir")
    source = getattr(model, SOURCE_WEIGHTS, None)
    if source is None:
        raise ValueError("model does not record its source weights; build it with load_model_dir or build_split_model")
    names = [name for name, _ in model.named_parameters()]
    roles.update((name, "body") for name in names if name not in roles and file_name(name) in source)
    unknown = [name for name in names if name not in roles]
    if unknown:
        raise RoleError(f"{len(unknown)} parameter(s) in no role: not in the model directory's weights, no split "
                        f"embedding or lm_head, no LoRA adapter (injected after load?): {', '.join(unknown[:8])}")
    return {name: roles[name] for name in names}


__all__ = ["ROLES", "ModelMeta", "SplitEmbedding", "SplitLMHead",
           "export_hf", "extend_model", "load_model_dir", "parameter_roles", "read_model_meta"]
