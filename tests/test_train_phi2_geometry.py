"""phi-2's real widths through the stages that move embedding rows: bf16, 2 ranks, uneven partitions.

Hidden 2560, the 50,295 base ids of phi-2's tokenizer plus 8,649 new ones (58,944 ids, a multiple of
64 as in EEVE-Korean-2.8B), lm_head with bias, one transformer layer. On 2 ranks the base bias (50,295
elements) splits unevenly, which is where DeepSpeed's full-tensor setter overruns: each stage must hand
off per-rank partitions. Stages 1-5, one step each, checked against DeepSpeed's zero_to_fp32 view.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from _train_helpers import check_stage, ds_config, read_log, roles_of, run_config, train_stage, write_prefix

from megaeeve import assets
from megaeeve.model import extend_model, read_model_meta

pytestmark = pytest.mark.slow

NEW_TOKENS = 8_649  # 50,295 + 8,649 = 58,944 = EEVE-Korean-2.8B's vocab_size


def _phi2_one_layer(out_dir):
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    config = PhiConfig(vocab_size=51_200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=1,
                       num_attention_heads=32, partial_rotary_factor=0.4, max_position_embeddings=64,
                       tie_word_embeddings=False)
    model = PhiForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()
    model.save_pretrained(str(out_dir))
    return out_dir


def test_phi2_widths_bf16_two_ranks_stages_1_to_5(tmp_path, phi2_tokenizer_dir, korean_split):
    tok = assets.phi2_tokenizer()
    tok.add_tokens([chr(0xAC00 + i) for i in range(NEW_TOKENS)])  # Hangul syllables, in Korean text
    expanded = assets.save_hf_tokenizer(tok, tmp_path / "tokenizer")
    stage0 = tmp_path / "stage0"
    extend_model(_phi2_one_layer(tmp_path / "base"), phi2_tokenizer_dir, tokenizer=expanded, output=stage0,
                 pad_vocab_to_multiple_of=64)
    shutil.rmtree(tmp_path / "base")
    meta = read_model_meta(stage0)
    assert (meta.base_vocab_size, meta.num_added, meta.padded_vocab_size) == (50_295, NEW_TOKENS, 58_944)

    ko = write_prefix(tmp_path / "ko", stage0, korean_split[0][:8], max_tokens=64)
    stages = [1, 2, 3, 4, 5]
    run_dir = tmp_path / "run"
    cfg = run_config(tmp_path / "run.yaml", run_dir, stage0, [{"prefix": str(ko), "weight": 1.0, "name": "ko"}],
                     {s: {"steps": 1} for s in stages}, run_stages=stages,
                     training={"eval_samples": 1, "checkpoint_every": 0, "progress_bar": False, "report_to": [],
                               "handoff_shard_mb": 256})
    ds = ds_config(tmp_path / "ds.json", micro=1, accum=1, bf16=True)
    chain = {"run_dir": run_dir, "stages": stages, "model": stage0, "roles": roles_of(stage0), "bf16": True, "world": 2}
    for i, s in enumerate(stages):
        log = tmp_path / f"stage{s}.log"
        assert train_stage(ds, cfg, s, log) == 0, read_log(log)
        check_stage(chain, s)
        # Checked, so its view is kept in `chain`: only the hand-off the next stage starts from stays on disk (at
        # phi-2 widths a stage's checkpoint and hand-off hold about 4 GB).
        shutil.rmtree(run_dir / f"stage-{s}" / "checkpoints")
        if i:
            shutil.rmtree(run_dir / f"stage-{stages[i - 1]}")
