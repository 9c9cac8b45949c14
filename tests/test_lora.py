"""LoRA stages (PEFT adapters on the body): the hand-off's merge against PEFT's own merge_and_unload, for
Linear layers (Llama, Phi) and GPT-2's Conv1D, whose weight is stored [in, out] (fan_in_fan_out), in process
and through a LoRA stage on 2 ZeRO-3 ranks; `megaeeve report` on that run."""

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


@pytest.fixture(scope="module")
def gpt2_lora_run(module_tmp, gpt2_tokenizer_dir, korean_split, english_docs):
    """A LoRA stage on every Conv1D of a tiny GPT-2 (c_attn and mlp.c_fc, mlp.c_proj non-square, attn.c_proj
    square), 2 ranks, fp32: trained, handed off and checkpointed once."""
    from _train_helpers import ds_config, make_stage0, read_log, run_config, train_stage, write_prefix

    tmp = module_tmp("gpt2-lora")
    stage0 = make_stage0(tmp, "gpt2", gpt2_tokenizer_dir)
    sources = [{"prefix": str(write_prefix(tmp / "ko", stage0, korean_split[0][:20])), "weight": 0.7, "name": "ko"},
               {"prefix": str(write_prefix(tmp / "en", stage0, english_docs[:20])), "weight": 0.3, "name": "en"}]
    lora = {"r": 4, "alpha": 8.0, "target_modules": ["c_attn", "c_proj", "c_fc"]}
    cfg = run_config(tmp / "run.yaml", tmp / "run", stage0, sources,
                     {8: {"trainable": ["lora"], "lr": 1e-2, "steps": 2, "lora": lora}}, run_stages=[8],
                     training={"eval_samples": 2, "checkpoint_every": 0, "report_to": [], "progress_bar": False})
    log = tmp / "lora.log"
    assert train_stage(ds_config(tmp / "ds.json"), cfg, 8, log) == 0, read_log(log)
    return {"stage0": stage0, "cfg": cfg, "run_dir": tmp / "run", "lora": lora}


@pytest.mark.slow
def test_gpt2_lora_stage_hands_off_what_peft_merges(gpt2_lora_run):
    """final/ of the stage equals PEFT's merge_and_unload of the engine's adapters (DeepSpeed's zero_to_fp32 view
    of the last checkpoint) on the stage's input model, tensor for tensor."""
    from _train_helpers import engine_view, weights
    from peft import LoraConfig, get_peft_model

    from megaeeve.model import load_model_dir

    lora = gpt2_lora_run["lora"]
    view = engine_view(gpt2_lora_run["run_dir"], 8)
    adapters = {k: v for k, v in view.items() if ".lora_" in k}
    assert len(adapters) == 2 * 2 * 4 and all(v.abs().sum() > 0 for v in adapters.values())  # B moved from zero
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["target_modules"], bias="none")
    reference = get_peft_model(load_model_dir(gpt2_lora_run["stage0"]), config)
    missing, unexpected = reference.load_state_dict({f"base_model.model.{k}": v for k, v in adapters.items()},
                                                    strict=False)
    assert not unexpected and not [k for k in missing if ".lora_" in k]
    merged = reference.merge_and_unload().state_dict()
    before, after = weights(gpt2_lora_run["stage0"]), weights(gpt2_lora_run["run_dir"] / "stage-8" / "final")
    assert set(after) == set(before) <= set(merged)
    changed = [n for n in before if not torch.equal(after[n], before[n])]
    assert sorted(changed) == sorted(k.replace(".lora_A.default.", ".") for k in adapters if ".lora_A." in k)
    for name in before:
        torch.testing.assert_close(after[name], merged[name].float(), rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_report_of_a_run_with_a_lora_stage(gpt2_lora_run):
    """`megaeeve report` reads the LoRA stage's checkpoint with the stage's own roles: every base tensor (under its
    `.base_layer.` name where adapted) frozen and unchanged, the adapters its trainable tensors."""
    import json
    import subprocess
    import sys

    from _train_helpers import REPO, weights

    run_dir = gpt2_lora_run["run_dir"]
    done = subprocess.run([sys.executable, "-m", "megaeeve", "report", str(run_dir), "--config",
                           str(gpt2_lora_run["cfg"]), "--prompt", "Hello", "--max-new-tokens", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "report" / "report.json").read_text())
    check = report["frozen_checks"]["8"]
    adapters = 2 * 2 * 4  # A and B on 4 Conv1D layers of 2 blocks
    assert check["ok"] and check["trainable_total"] == check["trainable_changed"] == adapters
    assert check["frozen_total"] == check["frozen_unchanged"] == len(weights(gpt2_lora_run["stage0"]))
    # r (in + out) per adapted layer: c_attn 32 -> 96, attn.c_proj 32 -> 32, mlp.c_fc 32 -> 128, mlp.c_proj 128 -> 32
    assert report["stage_plans"]["8"]["trainable"] == 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
