"""The stage table, RUN.yaml validation, parameter groups and the schedule (no processes launched)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml

from megaeeve.errors import ConfigError
from megaeeve.model import parameter_roles
from megaeeve.model.checkpoint import ModelMeta, build_split_model
from megaeeve.stages import (ADDED_ROLES, DEFAULT_STAGES, ROLES, DistillSpec, LoraSpec, OutputMapSpec, Stage,
                             stage_table, trainable_names)
from megaeeve.training.config import DataConfig, TrainingConfig, batch_shape, load_run_config
from megaeeve.training.engine import freeze_for_stage, param_groups, warmup_cosine

DESIGN_TABLE = {  # ../shared/DESIGN.md "The seven stages"
    1: {"input_added"},
    2: {"output_added"},
    3: {"input_added", "output_added"},
    4: {"output_original", "output_added"},
    5: {"input_added", "output_original", "output_added"},
    6: set(ROLES),
    7: {"body"},
}


_SPLIT_META = ModelMeta(base_vocab_size=100, num_added=20, padded_vocab_size=128, hidden_size=16,
                        input_embedding="model.embed_tokens", output_embedding="lm_head", lm_head_bias=True,
                        tied_untied=False, base_model_rows=100, base_model="-", base_tokenizer="-",
                        base_tokenizer_fingerprint="-", tokenizer_fingerprint="-", tokenizer_files=[])


def _split_phi() -> torch.nn.Module:
    """A tiny split Phi on the meta device, built as a model directory's weights are loaded into."""
    from transformers import PhiConfig

    config = PhiConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       tie_word_embeddings=False)
    with torch.device("meta"):
        return build_split_model(config, _SPLIT_META, torch.float32)


@pytest.fixture(scope="module")
def split_phi():
    return _split_phi()


def test_default_table_is_the_eeve_schedule():
    assert {n: set(s.trainable) for n, s in DEFAULT_STAGES.items()} == DESIGN_TABLE


def test_each_stage_selects_exactly_its_roles(split_phi):
    roles = parameter_roles(split_phi)
    for number, stage in DEFAULT_STAGES.items():
        names = set(trainable_names(roles, stage))
        assert names == {n for n, r in roles.items() if r in DESIGN_TABLE[number]}
    assert set(trainable_names(roles, DEFAULT_STAGES[2])) == {"lm_head.added", "lm_head.bias_added"}


def test_overrides_and_custom_tables():
    table = stage_table({2: {"lr": 1e-3, "tokens": 10_000}, 8: {"trainable": "body", "lr": 1e-5, "steps": 5}})
    assert table[2].lr == 1e-3 and table[2].tokens == 10_000 and table[2].trainable == ("output_added",)
    assert table[8].trainable == ("body",) and list(table) == list(range(1, 9))
    custom = stage_table({1: {"trainable": ["input_added", "output_added"], "lr": 1e-4}}, use_defaults=False)
    assert list(custom) == [1] and custom[1].trainable == ("input_added", "output_added")
    with pytest.raises(ValueError, match="unknown role"):
        stage_table({1: {"trainable": ["embeddings"]}})
    with pytest.raises(ValueError, match="unknown setting"):
        stage_table({1: {"learning_rate": 1}})
    with pytest.raises(ValueError, match=r"must set \['lr'\]"):
        stage_table({9: {"trainable": ["body"]}})


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "RUN.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BASE = {"run_dir": "runs/x", "model": "stage0", "seq_length": 64,
        "data": [{"prefix": "data/ko", "weight": 0.7, "name": "ko"}, {"prefix": "data/en", "weight": 0.3}]}


def test_run_config_resolves_paths_and_stages(tmp_path):
    cfg = load_run_config(_write(tmp_path, {**BASE, "run_stages": [1, 3, 6], "stages": {3: {"lr": 3e-4}}}))
    assert cfg.run_dir == tmp_path / "runs" / "x" and cfg.model == tmp_path / "stage0"
    assert [s.name for s in cfg.data.sources] == ["ko", "en"] and cfg.data.sources[1].prefix == tmp_path / "data/en"
    assert cfg.previous_stage(1) is None and cfg.previous_stage(3) == 1 and cfg.previous_stage(6) == 3
    assert cfg.stages[3].lr == 3e-4


def test_schedule_presets(tmp_path):
    cfg = load_run_config(_write(tmp_path, {**BASE, "schedule": "eeve+distill", "stages": {2: {"objective": "lm"}}}))
    assert {n: s.objective for n, s in cfg.stages.items()} == {1: "distill", 2: "lm", 3: "distill", 4: "lm", 5: "lm",
                                                               6: "lm", 7: "lm"}
    assert {n: set(s.trainable) for n, s in cfg.stages.items()} == DESIGN_TABLE  # same stages, other objective
    assert all(s.objective == "lm" for s in load_run_config(_write(tmp_path, BASE)).stages.values())


@pytest.mark.parametrize("change, message", [
    ({"schedule": "eeve+lora"}, r"schedule: 'eeve\+lora'; presets are \['eeve', 'eeve\+distill', 'frozen-new-wsd'\]"),
    ({"seq_length": None}, "missing required key `seq_length`"),
    ({"epochs": 3}, r"unknown key\(s\) \['epochs'\]"),
    ({"run_stages": [1, 9]}, r"run_stages names stage\(s\) \[9\]"),
    ({"data": [{"prefix": "a", "weight": -1}]}, r"data.sources\[0\]: weight must be > 0"),
    ({"data": [{"weight": 1}]}, r"data.sources\[0\]: missing required key `prefix`"),
    ({"stages": {4: {"data_weights": {"fr": 1.0}}}}, r"stage 4 data_weights names unknown dataset\(s\) \['fr'\]"),
    ({"training": {"checkpoint_every_n": 1}}, r"training: unknown key"),
    ({"stages": {1: {"lr": "fast"}}}, r"stages\.1\.lr: expected a number, got 'fast'"),
    ({"stages": {1: {"steps": 1.5}}}, r"stages\.1\.steps: expected an integer, got 1\.5"),
    ({"training": {"eval_every": "often"}}, r"training\.eval_every: expected an integer, got 'often'"),
    ({"training": {"progress_bar": "yes"}}, r"training\.progress_bar: expected true or false, got 'yes'"),
    ({"training": {"report_to": ["mlflow"]}}, r"training\.report_to: unknown sink\(s\) \['mlflow'\]"),
    ({"data": [{"prefix": "a", "weight": "heavy"}]}, r"data\.sources\[0\]\.weight: expected a number"),
    ({"seq_length": "long"}, r"seq_length: expected an integer, got 'long'"),
    ({"training": {"attn_implementation": "flash"}}, r"training\.attn_implementation: 'flash' is not one of"),
    ({"training": {"log_every": 0}}, r"training\.log_every must be >= 1, got 0"),
    ({"training": {"eval_samples": 0}}, r"training\.eval_samples must be >= 1, got 0"),
    ({"training": {"checkpoint_every": -5}}, r"training\.checkpoint_every must be >= 0, got -5"),
    ({"training": {"keep_checkpoints": -1}}, r"training\.keep_checkpoints must be >= 0, got -1"),
    ({"training": {"peak_tflops": 0}}, r"training\.peak_tflops must be > 0 \(or left out\), got 0"),
    ({"training": {"profile_steps": [0, 3]}}, r"training\.profile_steps counts optimizer steps from 1, got \[0, 3\]"),
    ({"training": {"tensorboard": True}},  # the previous release's key names what replaced it
     r"training\.tensorboard is no longer read: write `report_to: \[tensorboard\]`"),
])
def test_run_config_errors_name_file_and_key(tmp_path, change, message):
    path = _write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config(path)
    assert str(path) in str(err.value)


def test_run_config_converts_what_yaml_leaves_as_strings(tmp_path):
    """PyYAML reads `2e-4` and `1e6` as strings (YAML 1.1 floats need a dot); numeric strings and integral
    floats become the declared types, as a user means them."""
    path = tmp_path / "RUN.yaml"
    path.write_text(yaml.safe_dump(BASE) + "stages:\n  1: {lr: 2e-4, tokens: 1e6, trainable: input_added}\n"
                    "training: {eval_every: '200', dist_timeout_s: 60}\n")
    assert isinstance(yaml.safe_load(path.read_text())["stages"][1]["lr"], str)  # what PyYAML gives
    cfg = load_run_config(path)
    assert cfg.stages[1].lr == 2e-4 and cfg.stages[1].tokens == 1_000_000 and isinstance(cfg.stages[1].tokens, int)
    assert cfg.stages[1].trainable == ("input_added",)
    assert cfg.training.eval_every == 200 and cfg.training.dist_timeout_s == 60.0


def test_batch_shape_checks_the_ds_config():
    assert batch_shape({"train_micro_batch_size_per_gpu": 2, "train_batch_size": 16}, 4, "ds.json").grad_accum == 2
    with pytest.raises(ConfigError, match="ds.json: train_batch_size 10"):
        batch_shape({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "train_batch_size": 10},
                    2, "ds.json")


def test_param_groups_hold_only_trainable_params_with_their_decay(split_phi):
    roles = parameter_roles(split_phi)
    stage = stage_table({6: {"weight_decay": 0.1}})[6]
    freeze_for_stage(split_phi, roles, stage)
    groups = {g["group"]: g for g in param_groups(split_phi, roles, stage)}
    assert groups["embeddings"]["weight_decay"] == 0.0
    assert groups["body_decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(len(p.shape) == 1 for p in groups["no_decay"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(split_phi.parameters()))
    stage1 = DEFAULT_STAGES[1]
    freeze_for_stage(split_phi, roles, stage1)
    groups = param_groups(split_phi, roles, stage1)
    assert [g["names"] for g in groups] == [["model.embed_tokens.added"]] and groups[0]["lr"] == stage1.lr
    assert [n for n, p in split_phi.named_parameters() if p.requires_grad] == ["model.embed_tokens.added"]


def test_added_rows_lr_scale_gives_the_new_rows_their_own_lr(split_phi):
    """Every parameter of the new tokens (input and output rows, the lm_head's new bias) and none other runs at the
    scaled lr, each keeping its decay; the groups keep the unscaled order so a resumed optimizer state matches."""
    roles = parameter_roles(split_phi)
    stage = stage_table({6: {"added_rows_lr_scale": "10", "weight_decay": 0.1, "embedding_weight_decay": 0.2}})[6]
    freeze_for_stage(split_phi, roles, stage)
    groups = param_groups(split_phi, roles, stage)
    assert [g["group"] for g in groups] == ["embeddings", "added_embeddings", "body_decay", "no_decay",
                                            "added_no_decay"]
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert {n for n, value in lr.items() if value == pytest.approx(10 * stage.lr)} == {
        n for n, r in roles.items() if r in ("input_added", "output_added")}
    assert sorted(lr) == sorted(roles) and {v for n, v in lr.items() if roles[n] not in ADDED_ROLES} == {stage.lr}
    by_group = {g["group"]: g for g in groups}
    assert (by_group["added_embeddings"]["weight_decay"], by_group["added_no_decay"]["weight_decay"]) == (0.2, 0.0)
    assert param_groups(split_phi, roles, DEFAULT_STAGES[6])[0]["group"] == "embeddings"  # scale 1: no new groups
    with pytest.raises(ValueError, match="stage 3: lr and added_rows_lr_scale must be > 0"):
        stage_table({3: {"added_rows_lr_scale": 0}})


def test_biases_of_the_head_never_decay(split_phi):
    """The lm_head's biases are 1-D: no weight decay even where its rows decay (`embedding_weight_decay`). Under
    AdamW with the groups as built, a bias whose gradient is zero stays bitwise where it was over steps, while the
    decaying rows beside it shrink."""

    model = build_split_model(split_phi.config, _SPLIT_META, torch.float32)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    roles = parameter_roles(model)
    stage = stage_table({4: {"embedding_weight_decay": 0.5, "lr": 0.1}})[4]  # all output rows and their biases
    freeze_for_stage(model, roles, stage)
    groups = param_groups(model, roles, stage)
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert decay == {"lm_head.original": 0.5, "lm_head.added": 0.5, "lm_head.bias_original": 0.0,
                     "lm_head.bias_added": 0.0}
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in decay}
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    for _ in range(3):
        for n in decay:
            params[n].grad = torch.zeros_like(params[n])
        optimizer.step()
    assert torch.equal(params["lm_head.bias_original"], before["lm_head.bias_original"])
    assert torch.equal(params["lm_head.bias_added"], before["lm_head.bias_added"])
    assert params["lm_head.original"].norm() < before["lm_head.original"].norm()  # the rows do decay


def test_warmup_then_cosine_to_the_floor():
    f = warmup_cosine(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert [round(f(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == 1.0 and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_lora_stage_settings_are_checked():
    table = stage_table({8: {"trainable": "lora", "lr": 1e-4, "lora": {"r": "8", "target_modules": "q_proj"}}})
    assert table[8].lora.r == 8 and table[8].lora.target_modules == ("q_proj",)
    with pytest.raises(ValueError, match="go together"):
        stage_table({8: {"trainable": ["lora"], "lr": 1e-4}})
    with pytest.raises(ValueError, match="both fully and through LoRA"):
        stage_table({8: {"trainable": ["lora", "body"], "lr": 1e-4, "lora": {}}})
    with pytest.raises(ValueError, match="QLoRA"):
        stage_table({8: {"trainable": ["lora"], "lr": 1e-4, "lora": {"quantize": "nf4"}}})


def test_a_parameter_injected_after_load_has_no_role():
    """Roles fail closed: `body` only for a parameter of the model directory's weights. A module injected after
    the model was built (a new head, an adapter megaeeve does not know) is an error naming it, not a body
    parameter that stage 6-7 would train and the hand-off would not find in its input."""
    from megaeeve.errors import MegaeeveError
    from megaeeve.model.lora import add_lora

    model = _split_phi()
    add_lora(model, stage_table({8: {"trainable": ["lora"], "lr": 1e-4, "lora": {"target_modules": ["fc1"]}}})[8].lora)
    roles = parameter_roles(model)  # PEFT's known layers: base weights stay body, adapters are lora
    assert roles["model.layers.0.mlp.fc1.base_layer.weight"] == "body"
    assert roles["model.layers.0.mlp.fc1.lora_A.default.weight"] == "lora"
    with torch.device("meta"):
        model.model.layers[1].probe = torch.nn.Linear(16, 4)
    with pytest.raises(MegaeeveError, match=r"model\.layers\.1\.probe\.weight.*model\.layers\.1\.probe\.bias"):
        parameter_roles(model)


def test_lora_stage_plan_counts_only_the_adapters(split_phi):
    from megaeeve.model.lora import add_lora

    stage = stage_table({8: {"trainable": ["lora"], "lr": 1e-4, "lora": {"r": 2, "target_modules": ["q_proj"]}}})[8]
    add_lora(split_phi, stage.lora)
    roles = parameter_roles(split_phi)
    names = trainable_names(roles, stage)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert sum(split_phi.get_parameter(n).numel() for n in names) == 2 * (2 * 16 + 16 * 2)  # 2 layers, A and B


def _readme_run_yaml_keys() -> list[str]:
    """The dotted keys docs/train.md's RUN.yaml table names (`stages.N.*` with N literally; `training.*` expanded)."""
    table = (Path(__file__).resolve().parents[1] / "docs" / "train.md").read_text().split("**RUN.yaml**", 1)[1]
    rows = [line for line in table.split("\n\n", 2)[1].splitlines()[2:] if line.startswith("|")]
    keys = []
    for row in rows:
        first, second = re.split(r"(?<!\\)\|", row)[1:3]
        for name in (k.split(":")[0].strip() for k in re.findall(r"`([^`]+)`", first)):
            if name.endswith(".*"):
                keys += [f"{name[:-2]}.{k.strip()}" for k in re.findall(r"`([^`]+)`", second)[0].split(",")]
                continue
            keys.append(name)
            if name == "stages.N":  # the overrides, before "; a new number defines ..."
                keys += [f"stages.N.{k}" for k in re.findall(r"`(\w+)`", second.split(";")[0])]
            braces = re.match(r"\s*`\{([^}]*)\}`", second)
            if braces:
                keys += [f"{name}.{part.split(':')[0].strip()}" for part in braces.group(1).split(",")]
    return keys


_SECTIONS = {"data": DataConfig, "training": TrainingConfig, "stages.N": Stage, "stages.N.lora": LoraSpec,
             "stages.N.distill": DistillSpec, "stages.N.output_map": OutputMapSpec}
_SAMPLES = {"run_dir": "runs/y", "model": "stage1", "seq_length": 32, "seed": 7, "data.sources": BASE["data"],
            "run_stages": [1, 2], "schedule": "eeve", "default_stages": True, "stages.N": {"lr": 1e-4},
            "stages.N.description": "custom", "stages.N.trainable": ["input_added"], "stages.N.lr": 1e-4,
            "stages.N.lora": {}, "stages.N.output_map": {}}
_ROLE_OF = {"stages.N.lora": ["lora"], "stages.N.output_map": ["output_added", "output_map"]}  # goes with the key


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


def test_every_key_in_the_readme_run_yaml_table_is_read(tmp_path):
    """A user copying docs/train.md's RUN.yaml table gets no "unknown key": each key it names loads (set to its
    default, or a sample where it has none), and every key the loader reads is in the table."""
    keys = _readme_run_yaml_keys()
    for key in keys:
        section, _, name = key.rpartition(".")
        if key in _SAMPLES:
            value = _SAMPLES[key]
        else:
            fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])} if section in _SECTIONS else {}
            value = _plain(fields[name].default) if name in fields else 0  # an unknown name: the loader refuses it
        roles = next((r for prefix, r in _ROLE_OF.items() if key.startswith(prefix)), None)
        raw = {**BASE, "data": {"sources": BASE["data"]}, "stages": {1: {"trainable": roles}} if roles else {}}
        path = [1 if p == "N" else p for p in key.split(".")]
        target = raw
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
        try:
            load_run_config(_write(tmp_path, raw))
        except ConfigError as e:
            pytest.fail(f"docs/train.md's RUN.yaml table names `{key}`: {e}")
    read = {"run_dir", "model", "data", "seq_length", "seed", "training", "schedule", "stages", "default_stages",
            "run_stages"}
    read |= {f"{section}.{f.name}" for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
             if f.name != "number"}
    named = set(keys) | {k.split(".")[0] for k in keys}
    assert read - named == set(), "keys the loader reads that docs/train.md's RUN.yaml table leaves out"
