"""A stage's model FLOPs count the work it really does (MFU in the metrics)."""

from __future__ import annotations

import torch
from _model_helpers import tiny_phi

from megaeeve.model import parameter_roles
from megaeeve.model.checkpoint import ModelMeta, build_split_model
from megaeeve.stages import DEFAULT_STAGES, trainable_names
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
