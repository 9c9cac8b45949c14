"""A stage's model FLOPs count the work it really does (MFU in the metrics)."""

from __future__ import annotations

import pytest
import torch
from _model_helpers import tiny_phi
from torch.utils.flop_counter import FlopCounterMode

from megaeeve.model import parameter_roles
from megaeeve.model.checkpoint import ModelMeta, build_split_model
from megaeeve.stages import DEFAULT_STAGES, stage_table, trainable_names
from megaeeve.training.engine import freeze_for_stage
from megaeeve.training.throughput import flops_per_token


def _model():
    config = tiny_phi().config
    meta = ModelMeta(base_vocab_size=50_000, num_added=1_000, padded_vocab_size=51_200, hidden_size=32,
                     input_embedding="model.embed_tokens", output_embedding="lm_head", lm_head_bias=True,
                     tied_untied=False, base_model_rows=51_200, base_model="-", base_tokenizer="-",
                     base_tokenizer_fingerprint="-", tokenizer_fingerprint="-", tokenizer_files=[])
    with torch.device("meta"):
        model = build_split_model(config, meta, torch.float32)
    return model, parameter_roles(model)


def test_stage_flops_follow_what_trains():
    model, roles = _model()
    seq = 128
    numel = {n: p.numel() for n, p in model.named_parameters()}
    matmul = sum(v for n, v in numel.items() if not roles[n].startswith("input_"))  # the input embedding is a lookup
    head_added = sum(v for n, v in numel.items() if roles[n] == "output_added")
    attention = 4 * model.config.num_hidden_layers * model.config.hidden_size * seq

    def stage(number: int) -> float:
        return flops_per_token(model, roles, seq, trainable_names(roles, DEFAULT_STAGES[number]))

    assert stage(6) == 6 * matmul + 3 * attention  # everything trains: the usual 6 N + 12 L h s
    assert stage(2) == 2 * matmul + attention + 2 * head_added  # new output rows: no gradient below the head
    assert stage(1) == 4 * matmul + 3 * attention  # new input rows: gradients flow through it all, no matmul weights
    assert stage(7) == stage(6) - 2 * sum(v for n, v in numel.items() if roles[n].startswith("output_"))
    assert stage(2) < stage(4) < stage(5) < stage(6) and stage(1) < stage(6)


@pytest.mark.slow
@pytest.mark.parametrize("number", [2, 7, "lora"])
def test_stage_flops_match_torch_flop_counter(number):
    """The formula against torch's own count of one forward and backward of a tiny real split model (eager
    attention: the CPU sdpa kernel is not counted). A LoRA stage trains adapters inside the frozen body, so the
    activation gradients flow back through the body to its lowest adapter, as in stage 7 (body only).

    The formula counts 2 flops per bias element, which the counter leaves out, and in a LoRA stage the input-side
    gradients of the lowest layer, which autograd skips when nothing below it trains: about 1/L of the body's
    backward, so the model has 32 layers like phi-2 (about 3% in all; leaving out the frozen body's backward
    would be 50%)."""
    from transformers import PhiConfig

    from megaeeve.model.lora import add_lora

    config = PhiConfig(vocab_size=128, hidden_size=32, intermediate_size=128, num_hidden_layers=32,
                       num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    meta = ModelMeta(base_vocab_size=100, num_added=20, padded_vocab_size=128, hidden_size=32,
                     input_embedding="model.embed_tokens", output_embedding="lm_head", lm_head_bias=True,
                     tied_untied=False, base_model_rows=100, base_model="-", base_tokenizer="-",
                     base_tokenizer_fingerprint="-", tokenizer_fingerprint="-", tokenizer_files=[])
    torch.manual_seed(0)
    model = build_split_model(config, meta, torch.float32, attn_implementation="eager")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    if number == "lora":
        stage = stage_table({8: {"trainable": "lora", "lr": 1e-4,
                                 "lora": {"r": 4, "target_modules": ["q_proj", "v_proj", "dense"]}}})[8]
        add_lora(model, stage.lora)
    else:
        stage = DEFAULT_STAGES[number]
    roles = parameter_roles(model)
    trainable = freeze_for_stage(model, roles, stage)
    ids = torch.randint(0, 120, (2, 32))
    with FlopCounterMode(display=False) as counter:
        logits = model(ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    measured = counter.get_total_flops() / ids.numel()
    assert flops_per_token(model, roles, ids.shape[1], trainable) == pytest.approx(measured, rel=0.05)
