"""A stage's shared map of the new output rows (stage setting `output_map`, megaeeve/model/output_map.py): the head's
forward against plain rows with the map folded in, the stage's roles and optimizer group, and a stage on 3 bf16
ZeRO-3 ranks whose hand-off must equal the fold of DeepSpeed's own consolidated checkpoint."""

from __future__ import annotations

import pytest
import torch

from megaeeve.model.output_map import add_output_map, features_of, folded_rows
from megaeeve.model.split import SplitLMHead
from megaeeve.stages import OUTPUT_MAP, OutputMapSpec, Stage


def _head(bias: bool) -> SplitLMHead:
    torch.manual_seed(0)
    head = SplitLMHead(num_original=11, num_added=5, num_padding=2, hidden_size=8, bias=bias)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    return head


@pytest.mark.parametrize("bias", [False, True])
def test_forward_is_the_folded_rows_and_starts_at_the_input(bias):
    """With B = 0 the logits are the unmapped head's bitwise; with a trained (nonzero) B they are those of a plain
    head whose new rows are folded_rows(...), which is what the hand-off writes; A and B get gradients."""
    head, plain = _head(bias), _head(bias)
    input_rows = torch.randn(5, 8)
    add_output_map(torch.nn.Sequential(head), OutputMapSpec(rank=3), features_of(input_rows))
    hidden = torch.randn(4, 6, 8)
    unmapped = plain(hidden)
    assert torch.equal(head(hidden), unmapped)
    with torch.no_grad():
        head.map_b.normal_()
        plain.added.copy_(folded_rows(head.map_features, plain.added, head.map_a, head.map_b))
    out = head(hidden)
    assert not torch.allclose(out[..., 11:16], unmapped[..., 11:16])  # the map moved the new tokens' logits
    torch.testing.assert_close(out, plain(hidden), rtol=0, atol=1e-5)
    assert torch.equal(out[..., :11], plain(hidden)[..., :11]) and torch.isinf(out[..., 16:]).all()
    out[..., :16].logsumexp(-1).sum().backward()
    assert head.map_a.grad.abs().sum() > 0 and head.map_b.grad.abs().sum() > 0


def test_stage_settings_and_the_map_group():
    """The role and the settings go together; the map trains in a group of its own at lr * lr_scale, no decay."""
    from megaeeve.training.engine import param_groups

    with pytest.raises(ValueError, match="go together"):
        Stage(9, "x", ("output_added", OUTPUT_MAP), lr=1e-3)
    with pytest.raises(ValueError, match="go together"):
        Stage(9, "x", ("output_added",), lr=1e-3, output_map=OutputMapSpec())
    with pytest.raises(ValueError, match="rank must be >= 1"):
        OutputMapSpec(rank=0)
    model = torch.nn.Sequential(_head(False))
    add_output_map(model, OutputMapSpec(rank=2), torch.randn(5, 8))
    roles = {"0.original": "output_original", "0.added": "output_added", "0.map_a": OUTPUT_MAP, "0.map_b": OUTPUT_MAP}
    stage = Stage(9, "x", ("output_added", OUTPUT_MAP), lr=1e-3, weight_decay=0.1, embedding_weight_decay=0.1,
                  output_map=OutputMapSpec(rank=2, lr_scale=5.0))
    model[0].original.requires_grad_(False)
    groups = {g["group"]: g for g in param_groups(model, roles, stage)}
    assert groups[OUTPUT_MAP]["names"] == ["0.map_a", "0.map_b"]
    assert groups[OUTPUT_MAP]["lr"] == pytest.approx(5e-3) and groups[OUTPUT_MAP]["weight_decay"] == 0.0
    assert groups["embeddings"]["names"] == ["0.added"] and groups["embeddings"]["lr"] == pytest.approx(1e-3)


@pytest.mark.slow
def test_stage_with_a_map_hands_off_the_fold_of_deepspeeds_view(module_tmp, phi2_tokenizer_dir, korean_split,
                                                                 english_docs):
    """A tiny Phi (lm_head bias), 3 ranks (uneven partitions), bf16, training its new output rows and their map:
    final/'s new output rows equal the fold of the engine's own A, B and rows (zero_to_fp32 of the last
    checkpoint) with x from the stage's input, its new bias the engine's; every other tensor of final/ is the
    input's, and the map is not in final/."""
    from _train_helpers import ds_config, engine_view, make_stage0, read_log, run_config, train_stage, weights, \
        write_prefix

    tmp = module_tmp("output-map")
    stage0 = make_stage0(tmp, "phi", phi2_tokenizer_dir)
    sources = [{"prefix": str(write_prefix(tmp / "ko", stage0, korean_split[0][:20])), "weight": 0.7, "name": "ko"},
               {"prefix": str(write_prefix(tmp / "en", stage0, english_docs[:20])), "weight": 0.3, "name": "en"}]
    cfg = run_config(tmp / "run.yaml", tmp / "run", stage0, sources,
                     {8: {"trainable": ["output_added", OUTPUT_MAP], "lr": 1e-2, "steps": 2,
                          "output_map": {"rank": 4, "lr_scale": 2.0}}}, run_stages=[8],
                     training={"eval_samples": 2, "checkpoint_every": 0, "report_to": [], "progress_bar": False})
    log = tmp / "map.log"
    assert train_stage(ds_config(tmp / "ds.json", micro=1, accum=2, bf16=True), cfg, 8, log, world=3) == 0, \
        read_log(log)
    view = engine_view(tmp / "run", 8)
    before, after = weights(stage0), weights(tmp / "run" / "stage-8" / "final")
    assert set(after) == set(before) and "lm_head.map_a" in view and view["lm_head.map_b"].abs().sum() > 0
    expected = folded_rows(features_of(before["model.embed_tokens.added"]), view["lm_head.added"],
                           view["lm_head.map_a"], view["lm_head.map_b"])
    assert not torch.allclose(expected, view["lm_head.added"])  # the fold changes the rows
    torch.testing.assert_close(after["lm_head.added"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(after["lm_head.bias_added"], view["lm_head.bias_added"], rtol=0, atol=0)
    for name in before.keys() - {"lm_head.added", "lm_head.bias_added"}:  # the trainable set: output_added
        assert torch.equal(after[name], before[name]), name
