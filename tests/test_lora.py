"""LoRA stages (PEFT adapters on the body): the hand-off's merge against PEFT's own merge_and_unload, for
Linear layers (Llama, Phi) and GPT-2's Conv1D, whose weight is stored [in, out] (fan_in_fan_out)."""

from __future__ import annotations

import copy

import pytest
import torch

from megaeeve.model.lora import add_lora, lora_layers, merged_weight
from megaeeve.stages import LoraSpec


def _tiny(arch: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":  # c_attn [16, 48], attn.c_proj [16, 16], mlp.c_fc [16, 64], mlp.c_proj [64, 16]: Conv1D
        return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1))
    return PhiForCausalLM(PhiConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                                    num_attention_heads=2))


TARGETS = {"gpt2": ("c_attn", "c_proj", "c_fc"), "llama": ("q_proj", "v_proj", "down_proj"),
           "phi": ("q_proj", "dense", "fc2")}


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_merge_equals_peft_merge_and_unload(arch):
    """Nonzero B (a trained adapter): every merged weight, square or not, equals PEFT's merge of the same
    adapters, and a LoRA layer the merge does not see is untouched."""
    from peft import LoraConfig, get_peft_model

    base = _tiny(arch)
    spec = LoraSpec(r=4, alpha=8.0, target_modules=TARGETS[arch])
    ours = copy.deepcopy(base)
    add_lora(ours, spec)
    layers = lora_layers(ours)
    assert len(layers) == 2 * len(TARGETS[arch]) + (2 if arch == "gpt2" else 0)  # gpt2: attn and mlp c_proj
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B["default"].weight.normal_()
    reference = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8.0, target_modules=list(TARGETS[arch]),
                                                               bias="none"))
    reference.load_state_dict({f"base_model.model.{k}": v for k, v in ours.state_dict().items()})
    merged = reference.merge_and_unload().state_dict()
    plain = base.state_dict()
    for name, layer in layers.items():
        got = merged_weight(layer, plain[name], layer.lora_A["default"].weight, layer.lora_B["default"].weight)
        assert got.shape == plain[name].shape and got.dtype == torch.float32
        assert not torch.equal(got, plain[name])
        torch.testing.assert_close(got, merged[name], rtol=0, atol=1e-6, msg=f"{arch} {name}")
