"""Which base architectures extension can serve, checked on the loaded base model before anything is written.

Extension swaps the model's input embedding and lm_head for SplitEmbedding / SplitLMHead (split.py) and
keeps every other module as transformers builds it. That is exact only when the swapped modules compute a
row lookup, times a constant (Gemma 2 and 3 multiply by sqrt(hidden) inside their embedding module), and a
linear map with an optional bias. A base whose modules do anything else would train and export a model that
differs from the one it was extended from, so it is refused at extension time, never after training. The
check probes the modules themselves with the split modules, rather than trusting a list of class names, so
a new architecture that fits passes and one that does not fails with its reason.

Tested on tiny random configs (tests/test_architectures.py): Llama (tied and untied), Qwen2 (attention
biases), Qwen3, Mistral, Gemma 2 and 3 (scaled, tied embeddings), Phi-3 (fused qkv), Phi (lm_head bias).
Refused: Gemma 3n (a second, per-layer embedding table indexed by token id).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from megaeeve.errors import UnsupportedArchitecture
from megaeeve.model.split import SplitEmbedding, SplitLMHead

PROBE_ROWS = 64  # ids (first and last rows) and hidden vectors the probes run on


def embedding_scale(module: nn.Module) -> float | None:
    """The constant factor a scaled word embedding applies to its rows (Gemma 2/3: sqrt(hidden_size)),
    None for a plain lookup. transformers keeps it as `scalar_embed_scale`, set from the config."""
    scale = getattr(module, "scalar_embed_scale", None)
    return None if scale is None else float(scale)


def attention_implementation(config, requested: str | None) -> str | None:
    """`requested`, except sdpa for a model class that cannot run it (Gemma 2: sdpa has no attention-logit
    softcapping), which gets eager, as transformers' own default would choose. Only sdpa, the trainer's default,
    falls back: another kernel asked for by name stays an error of transformers."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if requested != "sdpa" or getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], "_supports_sdpa", True):
        return requested
    return "eager"


def check_architecture(model: nn.Module, base_model: str | Path, *, base_tok: Tokenizer, base_size: int,
                       base_tokenizer: str | Path) -> None:
    """Raise UnsupportedArchitecture unless every base token id has a row, and the split modules reproduce
    the model's input embedding and lm_head bit for bit (probed on a few ids and hidden vectors)."""
    arch = type(model).__name__
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    weight = getattr(inp, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnsupportedArchitecture(f"{base_model}: {arch}'s input embedding {type(inp).__name__} has no "
                                      f"[vocab, hidden] weight matrix, which extension splits")
    if weight.shape[0] < base_size:  # Llama-3.2's vision tokenizer (<|image|> = 128256) on a 128,256-row text model
        rows = weight.shape[0]
        extra = ", ".join(repr(base_tok.id_to_token(i)) for i in range(rows, min(base_size, rows + 3)))
        ids = f"id {rows} ({extra}) has" if base_size == rows + 1 else \
            f"ids {rows}-{base_size - 1} ({extra}{', ...' if base_size > rows + 3 else ''}) have"
        raise UnsupportedArchitecture(
            f"{base_model}: the model has {rows} embedding rows but the base tokenizer {base_tokenizer} has "
            f"{base_size} tokens: {ids} no row. Give the model's own tokenizer as --base-tokenizer (to "
            f"expand_vocab, then to extend_model), or a tokenizer without those tokens")
    if out is None or not isinstance(getattr(out, "weight", None), torch.Tensor) or out.weight.shape != weight.shape:
        raise UnsupportedArchitecture(f"{base_model}: {arch} has no lm_head with a [vocab, hidden] weight like its "
                                      f"input embedding ({tuple(weight.shape)}); extension splits both")
    rows, hidden = weight.shape
    for name, module in model.named_modules():  # Gemma 3n: per-layer embeddings, also looked up by token id
        if isinstance(module, nn.Embedding) and module is not inp and module.num_embeddings == rows:
            raise UnsupportedArchitecture(f"{base_model}: {arch} has a second embedding indexed by token id, "
                                          f"{name} ({rows} rows), which extension does not grow: new ids would fall "
                                          f"outside it")
    ids = torch.cat([torch.arange(min(rows, PROBE_ROWS)), torch.arange(max(rows - PROBE_ROWS, 0), rows)])
    scale = embedding_scale(inp)
    split_in = SplitEmbedding(rows, 0, 0, hidden, dtype=weight.dtype, scale=scale)
    split_in.original = nn.Parameter(weight.detach(), requires_grad=False)  # shares the storage: no copy
    bias = getattr(out, "bias", None)
    split_out = SplitLMHead(rows, 0, 0, hidden, bias=bias is not None, dtype=weight.dtype)
    split_out.original = nn.Parameter(out.weight.detach(), requires_grad=False)
    if bias is not None:
        split_out.bias_original = nn.Parameter(bias.detach(), requires_grad=False)
    hidden_probe = torch.randn(PROBE_ROWS, hidden, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    with torch.no_grad():
        if not torch.equal(split_in(ids), inp(ids)):
            how = "a row lookup" if scale is None else f"a row lookup times {scale}"
            raise UnsupportedArchitecture(f"{base_model}: {arch}'s input embedding {type(inp).__name__} computes "
                                          f"more than {how}; megaeeve's split embedding cannot replace it exactly")
        if not torch.equal(split_out(hidden_probe), out(hidden_probe)):
            raise UnsupportedArchitecture(f"{base_model}: {arch}'s lm_head {type(out).__name__} is not a plain "
                                          f"linear map; megaeeve's split head cannot replace it exactly")
