"""The architecture matrix: tiny random configs (one layer, hidden 32) of the families users start from.

Each family has its own trap: tied embeddings (Llama 1B/3B, Gemma), attention biases (Qwen2), q/k norms
(Qwen3), sliding windows (Mistral), embeddings scaled by sqrt(hidden) inside the embedding module (Gemma 2/3),
fused qkv (Phi-3), an lm_head bias (Phi). For each: extension keeps the base vocabulary's logits bit-identical;
stages 1 (new input rows) and 2 (new output rows, from stage 1's hand-off) train on 2 CPU ranks with frozen
parameters unmoved in DeepSpeed's own zero_to_fp32 view; the export of stage 2's hand-off loads in plain
AutoModelForCausalLM with the split model's logits. Two launches of 2 ranks per architecture (~11 s each on the
2-core CI machine); all seven stages run in tests/test_train.py (Phi and tied Llama).
A family that cannot work (Gemma 3n) is refused at extension time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_helpers import NEW_TOKENS, check_stage, ds_config, read_log, roles_of, run_config, train_stage, write_prefix

from megaeeve import assets
from megaeeve.model import export_hf, extend_model, load_model_dir, read_model_meta
from megaeeve.errors import UnsupportedArchitecture
from megaeeve.tokenizer_io import load_tokenizer

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64)


def _config(arch: str, vocab_size: int):
    import transformers as tf

    if arch in ("llama-tied", "llama-untied"):
        return tf.LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=arch == "llama-tied", **TINY)
    if arch == "qwen2":
        return tf.Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=False, **TINY)
    if arch == "qwen3":
        return tf.Qwen3Config(vocab_size=vocab_size, head_dim=8, tie_word_embeddings=True, **TINY)
    if arch == "mistral":
        return tf.MistralConfig(vocab_size=vocab_size, sliding_window=16, **TINY)
    if arch == "gemma2":
        return tf.Gemma2Config(vocab_size=vocab_size, head_dim=8, **TINY)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(vocab_size=vocab_size, head_dim=8, **TINY)
    if arch == "phi3":
        return tf.Phi3Config(vocab_size=vocab_size, pad_token_id=0, **{**TINY, "num_key_value_heads": 4})
    if arch == "phi":
        return tf.PhiConfig(vocab_size=vocab_size, tie_word_embeddings=False, **TINY)
    raise AssertionError(arch)


ARCHS = ["llama-tied", "llama-untied", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "phi"]
CLASSES = {"llama-tied": "LlamaForCausalLM", "llama-untied": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM",
           "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM", "phi": "PhiForCausalLM"}


def tiny_model(arch: str, vocab_size: int, seed: int = 0):
    """A random model of `arch`; biases and norm weights drawn too (zeros and ones would hide a mix-up)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, vocab_size)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    assert type(model).__name__ == CLASSES[arch]
    return model


@pytest.fixture(scope="module")
def matrix(module_tmp, phi2_tokenizer_dir, korean_split, english_docs):
    """Per architecture: the base model and its stage-0 directory over phi-2's tokenizer + 14 Korean tokens;
    Korean + English datasets in that expanded tokenizer (the same for every architecture)."""
    tmp = module_tmp("archs")
    tok = load_tokenizer(phi2_tokenizer_dir)
    tok.add_tokens(NEW_TOKENS)
    tok_dir = assets.save_hf_tokenizer(tok, tmp / "expanded-tokenizer")
    rows = -(-load_tokenizer(phi2_tokenizer_dir).get_vocab_size(with_added_tokens=True) // 64) * 64
    cells = {}
    for arch in ARCHS:
        base = tiny_model(arch, rows)
        base_dir = tmp / f"{arch}-base"
        base.save_pretrained(str(base_dir))
        extend_model(base_dir, phi2_tokenizer_dir, tokenizer=tok_dir, output=tmp / f"{arch}-stage0",
                     pad_vocab_to_multiple_of=64)
        cells[arch] = {"base": base, "stage0": tmp / f"{arch}-stage0"}
    ko = write_prefix(tmp / "ko", tok_dir, korean_split[0][:24])
    en = write_prefix(tmp / "en", tok_dir, english_docs[:24])
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    ids = torch.tensor([tok.encode("대한민국 헌법 제1조 The Constitution of Korea, def f(x): return x").ids])
    return {"tmp": tmp, "cells": cells, "sources": sources, "ds": ds_config(tmp / "ds.json", micro=1, accum=1),
            "ids": ids, "base_ids": ids.clamp(max=rows - 1), "chains": {}}


@pytest.mark.parametrize("arch", ARCHS)
def test_stage0_keeps_base_logits_bit_identical(matrix, arch):
    cell, ids = matrix["cells"][arch], matrix["ids"]
    meta = read_model_meta(cell["stage0"])
    base_ids = ids[ids < meta.base_vocab_size].unsqueeze(0)
    with torch.no_grad():
        split = load_model_dir(cell["stage0"])(base_ids).logits
        base = cell["base"](base_ids).logits
    n = meta.base_vocab_size
    assert torch.equal(split[..., :n], base[..., :n])
    assert (ids >= n).any()  # the probe text does reach new tokens (used by the export test)


@pytest.mark.parametrize("arch", ARCHS)
def test_fit_feeds_the_base_what_its_embedding_gives(matrix, arch):
    """--init fit runs the base on input vectors it builds from rows (inputs_embeds); they must be what the
    model's own embedding gives (Gemma scales its rows by sqrt(hidden) inside the embedding module), or the
    teacher of the input fit and the fold's hidden states are another model's."""
    from megaeeve.model.architectures import embedding_scale
    from megaeeve.model.fit import Rows

    base = matrix["cells"][arch]["base"]
    emb = base.get_input_embeddings()
    w = emb.weight.detach()
    rows = Rows(w, w, None, w[:0], w[:0], None, input_scale=embedding_scale(emb))
    ids = matrix["base_ids"]
    with torch.no_grad():
        assert torch.equal(base(inputs_embeds=rows.input_embeds(ids)).logits, base(ids).logits)


STAGES = [1, 2]  # new input rows, then new output rows: the stages that split embedding and head


def _chain(matrix, arch: str) -> dict:
    """Stages 1 and 2 of `arch` from its stage-0 directory, two steps each on 2 ranks in fp32, run once per module."""
    if arch not in matrix["chains"]:
        tmp, stage0 = matrix["tmp"], matrix["cells"][arch]["stage0"]
        run_dir = tmp / f"run-{arch}"
        cfg = run_config(tmp / f"{arch}.yaml", run_dir, stage0, matrix["sources"], {s: {"steps": 2} for s in STAGES},
                         run_stages=STAGES, training={"eval_samples": 1, "checkpoint_every": 0, "progress_bar": False})
        for stage in STAGES:
            log = tmp / f"{arch}-stage{stage}.log"
            assert train_stage(matrix["ds"], cfg, stage, log) == 0, read_log(log)
        matrix["chains"][arch] = {"run_dir": run_dir, "stages": STAGES, "model": stage0, "roles": roles_of(stage0),
                                  "bf16": False, "world": 2}
    return matrix["chains"][arch]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("arch", ARCHS)
def test_new_rows_train_and_frozen_parameters_stay_put(matrix, arch, stage):
    check_stage(_chain(matrix, arch), stage)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_in_plain_transformers_with_the_split_logits(matrix, arch, tmp_path):
    from transformers import AutoModelForCausalLM

    final = _chain(matrix, arch)["run_dir"] / f"stage-{STAGES[-1]}" / "final"
    plain = AutoModelForCausalLM.from_pretrained(str(export_hf(final, tmp_path / "hf"))).eval()
    assert type(plain).__name__ == CLASSES[arch]
    n = read_model_meta(final).vocab_size
    with torch.no_grad():
        split = load_model_dir(final)(matrix["ids"]).logits
        exported = plain(matrix["ids"]).logits
    assert torch.equal(exported[..., :n], split[..., :n])


def test_gemma_embedding_keeps_its_sqrt_hidden_scale(matrix):
    """Gemma multiplies embeddings by sqrt(hidden) inside its embedding module: the split one must too."""
    emb = load_model_dir(matrix["cells"]["gemma2"]["stage0"]).get_input_embeddings()
    assert emb.scale == pytest.approx(32 ** 0.5)
    assert load_model_dir(matrix["cells"]["llama-tied"]["stage0"]).get_input_embeddings().scale is None


def _gemma3n(vocab_size: int):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size, head_dim=8,
                               hidden_size_per_layer_input=8, layer_types=["full_attention"], num_kv_shared_layers=0,
                               laurel_rank=4, activation_sparsity_pattern=[0.0], **TINY)
    return Gemma3nForCausalLM(config).eval()


def test_unsupported_architectures_are_refused_at_extension(phi2_tokenizer_dir, tmp_path):
    tok = load_tokenizer(phi2_tokenizer_dir)
    tok.add_tokens(NEW_TOKENS)
    tok_dir = assets.save_hf_tokenizer(tok, tmp_path / "tok")
    rows = 50_304
    with pytest.raises(UnsupportedArchitecture, match="second embedding indexed by token id, "
                                                      "model.embed_tokens_per_layer"):
        extend_model("gemma3n", phi2_tokenizer_dir, tokenizer=tok_dir, output=tmp_path / "out", model=_gemma3n(rows))
    # An embedding whose scale megaeeve cannot see (as if transformers renamed the attribute) is caught by the
    # probe instead of training a model that differs from the base.
    gemma = tiny_model("gemma2", rows)
    del gemma.get_input_embeddings().scalar_embed_scale
    with pytest.raises(UnsupportedArchitecture, match="computes more than a row lookup"):
        extend_model("gemma2", phi2_tokenizer_dir, tokenizer=tok_dir, output=tmp_path / "out", model=gemma)
    assert not (tmp_path / "out").exists()
