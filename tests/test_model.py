"""Extended model: split embeddings, EEVE init, model directories, export to plain Hugging Face."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from megaeeve import assets
from megaeeve.model import extend_model, load_model_dir, parameter_roles, read_model_meta
from megaeeve.errors import ExtendError, UnsupportedArchitecture
from megaeeve.model.checkpoint import MODEL_FILE
from _model_helpers import KOREAN_ADDED_TOKENS, byte_level, expand, model_dir_like, save_model, tiny_llama, tiny_phi

REPO = Path(__file__).resolve().parents[1]


def tool(name: str, *args) -> int:
    """Run a tools/ front end's main() in this process (its argparse and error handling, no interpreter start)."""
    return runpy.run_path(str(REPO / "tools" / f"{name}.py"))["main"]([str(a) for a in args])


def _case(tmp: Path, base_tok: Tokenizer, base_tok_dir: Path, model, via_cli: bool) -> dict:
    expanded = expand(base_tok, tmp / "expanded", report_base_size=base_tok.get_vocab_size(with_added_tokens=True))
    base_dir = save_model(model, tmp / "base")
    stage0 = tmp / "stage0"
    if via_cli:
        assert tool("extend_model", "--base-model", base_dir, "--base-tokenizer", base_tok_dir,
                    "--tokenizer", expanded, "--output", stage0, "--init", "eeve") == 0
    else:
        extend_model(base_dir, base_tok_dir, tokenizer=expanded, output=stage0)
    return {"base": model, "base_tok": base_tok, "expanded": Tokenizer.from_file(str(expanded / "tokenizer.json")),
            "stage0": stage0, "meta": read_model_meta(stage0), "split": load_model_dir(stage0), "tmp": tmp,
            "expanded_dir": expanded, "base_dir": base_dir, "base_tok_dir": base_tok_dir}


@pytest.fixture(scope="module")
def phi(module_tmp, phi2_tokenizer_dir):
    """phi-2 layout: lm_head bias, 51,200 base rows for a 50,295-token tokenizer, extended by the CLI."""
    return _case(module_tmp("phi"), assets.phi2_tokenizer(), phi2_tokenizer_dir, tiny_phi(), True)


@pytest.fixture(scope="module")
def llama(module_tmp, gpt2_tokenizer_dir):
    """Llama with tied embeddings (as SmolLM2) and the GPT-2 tokenizer."""
    return _case(module_tmp("llama"), assets.gpt2_tokenizer(), gpt2_tokenizer_dir, tiny_llama(), False)


@pytest.fixture(params=["phi", "llama"])
def case(request):
    return request.getfixturevalue(request.param)


def _ids(high: int, low: int = 0, seed: int = 1) -> torch.Tensor:
    return torch.randint(low, high, (2, 12), generator=torch.Generator().manual_seed(seed))


def test_base_logits_equal_base_model_exactly(case):
    meta, ids = case["meta"], _ids(case["meta"].base_vocab_size)
    with torch.no_grad():
        base, split = case["base"](ids).logits, case["split"](ids).logits
    assert split.shape[-1] == meta.padded_vocab_size
    assert torch.equal(split[..., :meta.base_vocab_size], base[..., :meta.base_vocab_size])
    assert torch.isfinite(split[..., :meta.vocab_size]).all()
    assert torch.isneginf(split[..., meta.vocab_size:]).all()


def test_layout_and_metadata(phi, llama):
    p, q = phi["meta"], llama["meta"]
    assert (p.base_vocab_size, p.num_added, p.padded_vocab_size, p.base_model_rows) == (50295, 7, 50304, 51200)
    assert p.lm_head_bias and not p.tied_untied
    assert (q.base_vocab_size, q.padded_vocab_size, q.lm_head_bias, q.tied_untied) == (50257, 50304, False, True)
    config = json.loads((llama["stage0"] / "config.json").read_text())
    assert config["vocab_size"] == 50304 and config["tie_word_embeddings"] is False
    base_tok = Tokenizer.from_file(str(phi["stage0"] / "base_tokenizer" / "tokenizer.json"))
    assert base_tok.to_str() == phi["base_tok"].to_str()


def test_tied_embeddings_are_untied_copies(llama):
    weights = load_file(str(llama["stage0"] / MODEL_FILE))
    base = llama["base"].model.embed_tokens.weight
    assert torch.equal(weights["lm_head.original"], base) and torch.equal(weights["model.embed_tokens.original"], base)
    split = llama["split"]
    assert split.lm_head.original.data_ptr() != split.model.embed_tokens.original.data_ptr()


def _expected_pieces(base: Tokenizer, expanded: Tokenizer, new_id: int) -> list[int]:
    """Independent statement of the rule: the base pieces whose strings concatenate to the token's."""
    text = expanded.id_to_token(new_id)
    if text in KOREAN_ADDED_TOKENS:
        return base.encode(text, add_special_tokens=False).ids
    pieces = base.encode(expanded.decode([new_id]), add_special_tokens=False).ids
    if "".join(base.id_to_token(i) for i in pieces) != text:  # partial UTF-8 token: BPE of its own bytes
        pieces = [t.id for t in base.model.tokenize(text)]
    assert "".join(base.id_to_token(i) for i in pieces) == text
    return pieces


def test_new_rows_follow_eeve_init(phi):
    meta, base, expanded = phi["meta"], phi["base"], phi["expanded"]
    weights = load_file(str(phi["stage0"] / MODEL_FILE))
    base_in, base_out, base_bias = base.model.embed_tokens.weight, base.lm_head.weight, base.lm_head.bias
    partial = expanded.token_to_id(byte_level("대")[:2])
    assert expanded.decode([partial]) == "\ufffd"  # why decode + encode would be wrong for this token
    for k, new_id in enumerate(range(meta.base_vocab_size, meta.vocab_size)):
        pieces = _expected_pieces(phi["base_tok"], expanded, new_id)
        assert all(i < meta.base_vocab_size for i in pieces) and pieces
        torch.testing.assert_close(weights["model.embed_tokens.added"][k], base_in[pieces].mean(0), rtol=0, atol=1e-7)
        assert torch.equal(weights["lm_head.added"][k], base_out[pieces[0]])
        assert torch.equal(weights["lm_head.bias_added"][k], base_bias[pieces[0]])


@pytest.mark.parametrize("init", ["mean", "random"])
def test_baseline_inits_keep_base_logits_and_are_recorded(phi, init):
    from megaeeve.model.init import mean_rows, random_rows

    out = phi["tmp"] / f"stage0-{init}"
    assert tool("extend_model", "--base-model", phi["base_dir"], "--base-tokenizer", phi["base_tok_dir"],
                "--tokenizer", phi["expanded_dir"], "--output", out, "--init", init) == 0
    meta, weights, base = read_model_meta(out), load_file(str(out / MODEL_FILE)), phi["base"]
    assert meta.init == init and phi["meta"].init == "eeve"
    n, head = meta.base_vocab_size, base.lm_head
    if init == "mean":
        expected = mean_rows(base.model.embed_tokens.weight[:n], head.weight[:n], head.bias[:n], meta.num_added)
    else:
        expected = random_rows(meta.num_added, meta.hidden_size, base.config.initializer_range, bias=True)
    for name, rows in zip(("model.embed_tokens.added", "lm_head.added", "lm_head.bias_added"), expected):
        assert torch.equal(weights[name], rows), name
    ids = _ids(n)
    with torch.no_grad():
        assert torch.equal(load_model_dir(out)(ids).logits[..., :n], base(ids).logits[..., :n])


def test_model_dir_without_init_field_reads_as_eeve(phi, tmp_path):
    """Directories written before --init existed have no `init` key."""
    (tmp_path / "megaeeve_model.json").write_text(json.dumps(
        {k: v for k, v in json.loads((phi["stage0"] / "megaeeve_model.json").read_text()).items() if k != "init"}))
    assert read_model_meta(tmp_path) == phi["meta"]


def test_parameter_roles(phi, llama):
    roles = parameter_roles(phi["split"])
    assert set(roles) == {n for n, _ in phi["split"].named_parameters()}
    assert {k: v for k, v in roles.items() if v != "body"} == {
        "model.embed_tokens.original": "input_original", "model.embed_tokens.added": "input_added",
        "lm_head.original": "output_original", "lm_head.bias_original": "output_original",
        "lm_head.added": "output_added", "lm_head.bias_added": "output_added"}
    assert sorted(set(parameter_roles(llama["split"]).values())) == sorted(
        ["body", "input_added", "input_original", "output_added", "output_original"])
    with pytest.raises(ValueError, match="no split"):
        parameter_roles(llama["base"])


def test_freezing_originals_trains_only_new_rows(phi):
    """A stage-1-like step: only `added` rows get gradients; padding is never the target of probability."""
    model = load_model_dir(phi["stage0"]).train()
    for name, p in model.named_parameters():
        p.requires_grad_(parameter_roles(model)[name] == "input_added")
    meta = phi["meta"]
    ids = torch.cat([torch.tensor([[50295, 50297]] * 2), _ids(meta.base_vocab_size)], dim=1)
    logits = model(ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    grad = model.model.embed_tokens.added.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0 and not grad[[1, 3, 4, 5, 6]].any()
    assert all(p.grad is None for n, p in model.named_parameters() if n != "model.embed_tokens.added")
    assert torch.softmax(logits, -1)[..., meta.vocab_size:].max() == 0


def test_export_loads_in_plain_transformers_with_same_logits(case):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta, out = case["meta"], case["tmp"] / "exported"
    assert tool("export_hf", "--input", case["stage0"], "--output", out) == 0
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert model.config.vocab_size == meta.padded_vocab_size and len(tokenizer) == meta.vocab_size
    ids = torch.cat([_ids(meta.base_vocab_size), _ids(meta.vocab_size, meta.base_vocab_size)], dim=1)
    with torch.no_grad():
        plain, split = model(ids).logits, case["split"](ids).logits
    # Base rows come out bitwise; new rows through a different GEMM shape may differ in the last ulp.
    assert torch.equal(plain[..., :meta.base_vocab_size], split[..., :meta.base_vocab_size])
    torch.testing.assert_close(plain[..., :meta.vocab_size], split[..., :meta.vocab_size], rtol=1e-6, atol=1e-6)
    assert not model.get_output_embeddings().weight[meta.vocab_size:].any()
    assert model.generation_config.suppress_tokens == list(range(meta.vocab_size, meta.padded_vocab_size))
    prompt = tokenizer("대한민국 헌법", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 6
    assert generated.max() < meta.vocab_size


def test_sharded_weights_read_as_one_file(phi):
    """A directory whose weights are shards with an index (the hand-off of a large model) loads and exports
    exactly as the single-file one, and plain transformers still refuses it."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from megaeeve.model import export_hf
    from megaeeve.model.weights import load_weights, plan_shards, shard_name, write_index

    state = load_weights(phi["stage0"])
    sharded = phi["tmp"] / "sharded"
    shutil.copytree(phi["stage0"], sharded)
    (sharded / MODEL_FILE).unlink()
    sizes = [(k, v.numel() * v.element_size()) for k, v in state.items()]
    shards = plan_shards(sizes, max_bytes=1 << 20)
    assert len(shards) > 2 and [n for names in shards for n in names] == list(state)
    for k, names in enumerate(shards):
        save_file({n: state[n] for n in names}, str(sharded / shard_name(k, len(shards))))
    write_index(sharded, shards, sum(n for _, n in sizes))
    again = load_weights(sharded)
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    one, many = load_model_dir(phi["stage0"]), load_model_dir(sharded)
    for (name, p), (_, q) in zip(one.named_parameters(), many.named_parameters()):
        assert torch.equal(p, q), name
    plain = AutoModelForCausalLM.from_pretrained(str(export_hf(sharded, phi["tmp"] / "sharded-hf")))
    assert torch.equal(plain.lm_head.bias[: phi["meta"].base_vocab_size], state["lm_head.bias_original"])
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(str(sharded))


def _changed_base_id(base: Tokenizer, out_dir: Path, bad_id: int) -> Path:
    data = json.loads(base.to_str())
    vocab = data["model"]["vocab"]  # swap two base ids: every string and merge stays valid
    a, b = (next(t for t, i in vocab.items() if i == n) for n in (bad_id, bad_id + 1))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    return expand(Tokenizer.from_str(json.dumps(data)), out_dir)


def test_errors_leave_no_output(llama, tmp_path, capsys):
    args = (llama["base_dir"], llama["base_tok_dir"])
    bad_tok = _changed_base_id(llama["base_tok"], tmp_path / "bad-tok", 1234)
    with pytest.raises(ExtendError, match="not an extension of the base tokenizer: id 1234"):
        extend_model(*args, tokenizer=bad_tok, output=tmp_path / "out")
    small = save_model(tiny_llama(vocab_size=50000), tmp_path / "small-model")
    with pytest.raises(UnsupportedArchitecture, match="50000 embedding rows .* 50257 tokens: ids 50000-50256 .* "
                                                      "--base-tokenizer"):
        extend_model(small, llama["base_tok_dir"], tokenizer=llama["expanded_dir"], output=tmp_path / "out")
    report = expand(llama["base_tok"], tmp_path / "wrong-report", report_base_size=50000)
    with pytest.raises(ExtendError, match="base_vocab_size 50000 but the base tokenizer has 50257"):
        extend_model(*args, tokenizer=report, output=tmp_path / "out")
    with pytest.raises(FileExistsError):
        extend_model(*args, tokenizer=llama["expanded_dir"], output=llama["stage0"])
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert tool("extend_model", "--base-model", args[0], "--base-tokenizer", args[1], "--tokenizer", bad_tok,
                "--output", tmp_path / "out") == 2
    assert "id 1234" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_no_new_tokens_is_the_base_model_with_split_rows(phi, tmp_path):
    """--allow-no-new-tokens: the base tokenizer itself gives a model directory with no `added` rows, whose
    logits, roles, hand-off and export are the base model's (the no-expansion baseline's stage 0)."""
    base_tok_dir = phi["base_tok_dir"]
    args = ("--base-model", phi["base_dir"], "--base-tokenizer", base_tok_dir, "--tokenizer", base_tok_dir)
    assert tool("extend_model", *args, "--output", tmp_path / "refused") == 2  # no new tokens: refused by default
    assert tool("extend_model", *args, "--output", tmp_path / "stage0", "--allow-no-new-tokens") == 0
    meta = read_model_meta(tmp_path / "stage0")
    assert (meta.base_vocab_size, meta.num_added, meta.padded_vocab_size) == (50295, 0, 50304)
    assert set(load_file(str(tmp_path / "stage0" / MODEL_FILE))) >= {"lm_head.original", "lm_head.bias_original"}
    model = load_model_dir(tmp_path / "stage0")
    roles = parameter_roles(model)
    assert {v for v in roles.values()} == {"input_original", "output_original", "body"}
    assert model.model.embed_tokens.added is None and model.lm_head.bias_added is None
    ids = _ids(meta.base_vocab_size)
    with torch.no_grad():
        base, split = phi["base"](ids).logits, model(ids).logits
    assert torch.equal(split[..., :meta.base_vocab_size], base[..., :meta.base_vocab_size])
    assert torch.isneginf(split[..., meta.base_vocab_size:]).all()
    model.train()
    F.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    assert model.model.embed_tokens.original.grad[ids.unique()].abs().sum() > 0
    assert model.lm_head.original.grad.abs().sum() > 0 and model.lm_head.bias_original.grad.abs().sum() > 0
    out = model_dir_like(load_file(str(tmp_path / "stage0" / MODEL_FILE)), tmp_path / "stage0", tmp_path / "final")
    assert tool("export_hf", "--input", out, "--output", tmp_path / "exported") == 0
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
    with torch.no_grad():
        assert torch.equal(plain(ids).logits[..., :meta.base_vocab_size], base[..., :meta.base_vocab_size])
