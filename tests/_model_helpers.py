"""Helpers for the model tests: tiny random base models and small expanded tokenizers built from real ones."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, pre_tokenizers

from megaeeve import assets

# Whole Korean words with and without a leading space, plus a token holding only the first two UTF-8
# bytes of "대" (it decodes to U+FFFD, so only the byte-level string gives its real pieces).
KOREAN_MODEL_TOKENS = [" 대한민국", "헌법", " 국민", "은", "\u0000partial"]
KOREAN_ADDED_TOKENS = ["안녕하세요", " 법률"]


def byte_level(text: str) -> str:
    """`text` in the byte-level alphabet (what a byte-level BPE vocabulary stores)."""
    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                   .pre_tokenize_str(text))


def model_token_strings() -> list[str]:
    tokens = [byte_level(t) for t in KOREAN_MODEL_TOKENS[:-1]]
    return tokens + [byte_level("대")[:2]]


def expand(base: Tokenizer, out_dir: Path, report_base_size: int | None = None) -> Path:
    """An expanded tokenizer directory: base + new BPE vocabulary entries + new added tokens.

    New ids follow the base's last id contiguously; the base vocabulary is untouched.
    """
    data = json.loads(base.to_str())
    vocab = data["model"]["vocab"]
    for added in data["added_tokens"]:  # tokenizers numbers added tokens after the model vocabulary:
        vocab.setdefault(added["content"], added["id"])  # pin the base's (phi-2's whitespace runs)
    next_id = base.get_vocab_size(with_added_tokens=True)
    for token in model_token_strings():
        vocab[token] = next_id
        next_id += 1
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_tokens(KOREAN_ADDED_TOKENS)
    assets.save_hf_tokenizer(tok, out_dir)
    if report_base_size is not None:
        (out_dir / "expansion_report.json").write_text(json.dumps({"base_vocab_size": report_base_size}))
    return out_dir


def tiny_phi(vocab_size: int = 51200, seed: int = 0):
    """Random PhiForCausalLM (lm_head with bias, untied), vocab padded like phi-2."""
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    config = PhiConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    model = PhiForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()  # a zero bias would hide a bias bug
    return model


def tiny_llama(vocab_size: int = 50257, seed: int = 0, tied: bool = True):
    """Random LlamaForCausalLM with tied embeddings (as SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = 50257, seed: int = 0):
    """Random GPT2LMHeadModel (tied embeddings, Conv1D layers storing their weights [in, out])."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def save_model(model, out_dir: Path) -> Path:
    model.save_pretrained(str(out_dir))
    return out_dir


def model_dir_like(state: dict, src_dir: Path, out_dir: Path) -> Path:
    """A model directory with `src_dir`'s config, meta and tokenizers and the weights `state` (one file)."""
    from safetensors.torch import save_file

    from megaeeve.model.checkpoint import MODEL_FILE, copy_model_files

    out_dir.mkdir(parents=True)
    copy_model_files(Path(src_dir), out_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / MODEL_FILE))
    return out_dir
