"""The models several benches build, so that no bench imports another.

- `tiny_phi_stage0`: a small random Phi extended to GPT-2's vocabulary plus tests/_train_helpers' new
  Korean tokens: a real stage-0 directory for CPU timing runs (the caller puts tests/ on sys.path);
- `phi2_config`, `phi2_meta`: phi-2's shapes (hidden 2560, lm_head bias, 50,295 base tokens) for meta-device
  counts and random-weight GPU runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from megaeeve.model.checkpoint import ModelMeta

if TYPE_CHECKING:
    from transformers import PhiConfig

PHI2_BASE_VOCAB = 50_295


def tiny_phi_stage0(tmp: Path, hidden: int, layers: int) -> Path:
    """A stage-0 directory (tmp/stage0) of a random Phi of `hidden` width and `layers` layers."""
    from _train_helpers import NEW_TOKENS
    from transformers import PhiConfig, PhiForCausalLM

    from megaeeve import assets
    from megaeeve.model import extend_model
    from megaeeve.tokenizer_io import load_tokenizer

    base = PhiForCausalLM(PhiConfig(vocab_size=50_304, hidden_size=hidden, intermediate_size=4 * hidden,
                                    num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                                    tie_word_embeddings=False))
    base.save_pretrained(str(tmp / "base"))
    gpt2 = assets.save_hf_tokenizer(assets.gpt2_tokenizer(), tmp / "gpt2")
    tok = load_tokenizer(gpt2)
    tok.add_tokens(NEW_TOKENS)
    expanded = assets.save_hf_tokenizer(tok, tmp / "expanded")
    extend_model(tmp / "base", gpt2, tokenizer=expanded, output=tmp / "stage0")
    return tmp / "stage0"


def phi2_config(vocab: int, layers: int) -> PhiConfig:
    """phi-2's configuration with `vocab` rows and `layers` layers."""
    from transformers import PhiConfig

    return PhiConfig(vocab_size=vocab, hidden_size=2560, intermediate_size=10240, num_hidden_layers=layers,
                     num_attention_heads=32, partial_rotary_factor=0.4, tie_word_embeddings=False)


def phi2_meta(new_tokens: int) -> ModelMeta:
    """The model metadata of phi-2 extended by `new_tokens`, vocabulary padded to a multiple of 64."""
    vocab = PHI2_BASE_VOCAB + new_tokens
    return ModelMeta(base_vocab_size=PHI2_BASE_VOCAB, num_added=new_tokens, padded_vocab_size=math.ceil(vocab / 64) * 64,
                     hidden_size=2560, input_embedding="model.embed_tokens", output_embedding="lm_head",
                     lm_head_bias=True, tied_untied=False, base_model_rows=51_200, base_model="phi-2 shapes",
                     base_tokenizer="-", base_tokenizer_fingerprint="-", tokenizer_fingerprint="-", tokenizer_files=[])
