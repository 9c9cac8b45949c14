"""Export a model directory to a plain Hugging Face model directory (no custom code).

The split parameters are concatenated back into `<input>.weight`, `<lm_head>.weight` (and `.bias`);
config.vocab_size stays the padded size (aligned matrices, as EEVE-2.8B's 58,944). Padding rows are
zero and generation_config.suppress_tokens lists their ids, so `generate` never emits them; a raw
argmax over the logits could still pick a padding id's 0 logit (plain transformers cannot mask it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from megaeeve.atomic import atomic_dir
from megaeeve.errors import OutputExistsError
from megaeeve.model.checkpoint import ModelMeta, read_model_meta
from megaeeve.model.weights import load_weights


def merged_state_dict(split: dict[str, torch.Tensor], meta: ModelMeta) -> dict[str, torch.Tensor]:
    """Standard HF weights from split ones: [original; added; zero padding rows]."""
    state = {k: v for k, v in split.items() if k not in meta.split_names()}
    merged = {f"{meta.input_embedding}.weight": f"{meta.input_embedding}.",
              f"{meta.output_embedding}.weight": f"{meta.output_embedding}."}
    if meta.lm_head_bias:
        merged[f"{meta.output_embedding}.bias"] = f"{meta.output_embedding}.bias_"
    for name, prefix in merged.items():
        original = split[f"{prefix}original"]
        added = split.get(f"{prefix}added", original[:0])  # a model without new tokens has none
        padding = original.new_zeros((meta.num_padding, *original.shape[1:]))
        state[name] = torch.cat([original, added, padding])
    return state


def export_hf(in_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32,
              overwrite: bool = False) -> Path:
    """Write `out_dir`: AutoModelForCausalLM + AutoTokenizer load it and generate, no custom code."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    meta = read_model_meta(in_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    config = AutoConfig.from_pretrained(str(in_dir))
    config.vocab_size = meta.padded_vocab_size
    config.tie_word_embeddings = False
    state = merged_state_dict(load_weights(in_dir), meta)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    generation = GenerationConfig.from_model_config(config)
    if meta.num_padding:
        generation.suppress_tokens = list(range(meta.vocab_size, meta.padded_vocab_size))
    model.generation_config = generation
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp))
        for name in meta.tokenizer_files:
            shutil.copy2(in_dir / name, tmp / name)
    return out_dir
