"""Evaluation (megaeeve/eval, tools/evaluate.py) against an independent computation with plain transformers."""

from __future__ import annotations

import json
import math
import re
import runpy
from pathlib import Path

import pytest
import torch

from megaeeve import assets
from megaeeve.eval import EvalSettings, evaluate_model, load_any_model, load_hf_tokenizer, read_texts
from megaeeve.eval.score import sequence_nll, windows
from megaeeve.model import export_hf, extend_model, read_model_meta
from _model_helpers import expand, model_dir_like, save_model, tiny_llama, tiny_phi

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 64  # max_position_embeddings of the tiny models


def tool(*args) -> int:
    return runpy.run_path(str(REPO / "tools" / "evaluate.py"))["main"]([str(a) for a in args])


@pytest.fixture(scope="module")
def docs(korean_split, english_docs) -> list[str]:
    """Short and long documents: the Korean ones run to hundreds of GPT-2 tokens, several windows."""
    held = korean_split[1]
    return [held[0], max(held[:40], key=len), english_docs[3][:300], "대한민국 헌법: 안녕하세요 법률"]


@pytest.fixture(scope="module")
def plain(module_tmp) -> Path:
    """A plain transformers model directory: tiny random Llama with GPT-2's tokenizer."""
    out = save_model(tiny_llama(), module_tmp("plain"))
    assets.save_hf_tokenizer(assets.gpt2_tokenizer(), out)
    return out


def reference_bits(model_dir: Path, docs: list[str]) -> float:
    """Bits of all documents, by hand: one document at a time, unbatched; target t (of [bos] + tokens) is
    predicted by the window that ends at min(CONTEXT + k * CONTEXT // 2, n) for the first such k covering t."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    total = 0.0
    for doc in docs:
        seq = [bos] + tok(doc, add_special_tokens=False).input_ids
        n, k, window = len(seq), 0, {}
        for t in range(1, n):
            while min(CONTEXT + k * (CONTEXT // 2), n) <= t:
                k += 1
            end = min(CONTEXT + k * (CONTEXT // 2), n)
            begin = max(0, end - CONTEXT)
            if (begin, end) not in window:
                with torch.no_grad():
                    window = {(begin, end): model(torch.tensor([seq[begin:end]])).logits[0, :, :len(tok)].double()}
            total -= torch.log_softmax(window[begin, end][t - 1 - begin], -1)[seq[t]].item()
    return total / math.log(2)


def test_windows_score_every_token_once():
    for n in (1, 2, 63, 64, 65, 96, 97, 200):
        seq = list(range(n))
        scored = []
        for w in windows(0, seq, 64, 32):
            assert len(w.ids) <= 64 and w.first >= 1 and w.ids == seq[w.start:w.start + len(w.ids)]
            scored += w.ids[w.first:]
            if w.first > 1:  # a later window: at least context - stride tokens of context
                assert w.first >= 32
        assert scored == seq[1:], n


def test_bits_per_char_equals_a_hand_computation(plain, docs):
    tokenizer = load_hf_tokenizer(plain)
    assert max(len(tokenizer(d).input_ids) for d in docs) > 3 * CONTEXT  # at least four windows
    result = evaluate_model(load_any_model(plain, device="cpu"), tokenizer, {"mixed": docs},
                            EvalSettings(batch_tokens=200, gen_tokens=0))["mixed"]
    chars, n_bytes = sum(map(len, docs)), sum(len(d.encode()) for d in docs)
    bits = reference_bits(plain, docs)
    assert result.bits_per_char == pytest.approx(bits / chars, rel=1e-4)
    assert result.bits_per_byte == pytest.approx(bits / n_bytes, rel=1e-4)
    tokens = sum(len(tokenizer(d).input_ids) for d in docs)
    assert (result.documents, result.characters, result.tokens) == (len(docs), chars, tokens)
    assert result.chars_per_token == chars / tokens and result.gen_chars_per_s is None


@pytest.fixture(scope="module")
def final_and_export(module_tmp, phi2_tokenizer_dir) -> tuple[Path, Path]:
    """A split model directory written as a stage's final/ is (new rows moved off their init), and its export.
    phi-2's layout leaves padding ids: -inf logits in the split model, 0 in the export."""
    tmp = module_tmp("split")
    base_tok = assets.phi2_tokenizer()
    expanded = expand(base_tok, tmp / "expanded", report_base_size=base_tok.get_vocab_size(with_added_tokens=True))
    extend_model(save_model(tiny_phi(), tmp / "base"), phi2_tokenizer_dir, tokenizer=expanded, output=tmp / "stage-0")
    state = load_any_model(tmp / "stage-0", device="cpu").state_dict()
    torch.manual_seed(0)
    for name in ("model.embed_tokens.added", "lm_head.added", "lm_head.bias_added"):
        state[name] = state[name] + torch.randn_like(state[name])
    final = model_dir_like(state, tmp / "stage-0", tmp / "final")
    return final, export_hf(final, tmp / "export")


def test_split_final_and_its_export_score_the_same(final_and_export, docs):
    final, export = final_and_export
    meta = read_model_meta(final)
    settings = EvalSettings(gen_tokens=4, gen_prompts=1, gen_prompt_chars=8)
    results = {}
    for path in (final, export):
        tokenizer = load_hf_tokenizer(path)
        assert any(i >= meta.base_vocab_size for i in tokenizer(docs[-1]).input_ids)  # new tokens in play
        model = load_any_model(path, device="cpu")
        results[path] = evaluate_model(model, tokenizer, {"mixed": docs}, settings)["mixed"]
    gap = abs(results[export].bits_per_char - results[final].bits_per_char)
    assert gap < 1e-7 * results[final].bits_per_char
    assert results[export].tokens == results[final].tokens and results[export].gen_chars_per_s > 0
    # Why the mask matters: the export's padding columns (logit 0) would otherwise take probability mass.
    model, tokenizer = load_any_model(export, device="cpu"), load_hf_tokenizer(export)
    seqs = [[tokenizer.eos_token_id] + tokenizer(d).input_ids for d in docs]
    unmasked = sum(sequence_nll(model, seqs, vocab_size=meta.padded_vocab_size, context=CONTEXT, stride=32,
                                batch_tokens=2048)) / math.log(2) / sum(map(len, docs))
    assert unmasked - results[export].bits_per_char > 100 * gap


def test_greedy_loop_matches_transformers_generate(plain):
    from megaeeve.eval.generate import _greedy_one

    model, tokenizer = load_any_model(plain, device="cpu"), load_hf_tokenizer(plain)
    prompt = tokenizer("The import statement", add_special_tokens=False).input_ids
    ids = torch.tensor([[tokenizer.bos_token_id] + prompt])
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                                  do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
    assert _greedy_one(model, tokenizer, "The import statement", 12, stop_at_eos=False) == tokenizer.decode(expected)


def test_cli_writes_json_and_a_table(plain, tmp_path, capsys, caplog, korean_split, english_docs):
    ko = assets.write_jsonl(korean_split[1][:5], tmp_path / "ko.jsonl")
    en = tmp_path / "en.txt"
    en.write_text("\n\n".join(d.replace("\n", " ") for d in english_docs[:3]) + "\n", encoding="utf-8")
    out = tmp_path / "eval.json"
    assert tool("--model", plain, "--text", f"ko={ko}", "--text", f"en={en}", "--max-docs", 4,
                "--gen-tokens", 4, "--output", out) == 0
    table = capsys.readouterr().out
    assert "bits/char" in table and "\nko " in table and "\nen " in table
    # Progress (no terminal here: a line at the end of each text, with windows and tokens per second).
    line = re.search(r"scoring ko: (\d+) windows, [\d.,]+ windows/s, [\d,]+ tokens/s, [\d.]+ s", caplog.text)
    assert line and int(line[1]) >= 4  # at least a window a document
    data = json.loads(out.read_text())
    assert data["model"] == str(plain) and list(data["texts"]) == ["ko", "en"]
    assert data["texts"]["ko"]["documents"] == 4 and data["texts"]["en"]["documents"] == 3  # blank lines are no docs
    assert set(data["texts"]["en"]) == {"bits_per_char", "bits_per_byte", "chars_per_token", "documents",
                                        "characters", "tokens", "gen_chars_per_s"}
    assert data["texts"]["ko"]["bits_per_char"] > 0 and data["texts"]["en"]["gen_chars_per_s"] > 0


def test_bad_input_is_one_error_line_naming_the_file(plain, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no text key"}\n', encoding="utf-8")
    good = assets.write_jsonl(["hello"], tmp_path / "good.jsonl")
    cases = [(["--model", plain, "--text", f"x={bad}"], f"{bad}:2"),
             (["--model", plain, "--text", f"x={tmp_path / 'missing.jsonl'}"], "missing.jsonl"),
             (["--model", plain, "--text", f"x={tmp_path / 'doc.csv'}"], "doc.csv"),
             (["--model", tmp_path / "no-model", "--tokenizer", plain, "--text", f"x={good}"], "no-model"),
             (["--model", plain, "--text", str(good)], "NAME=FILE")]
    (tmp_path / "doc.csv").write_text("a\n")
    for args, named in cases:
        assert tool(*args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert read_texts(bad, max_docs=1) == ["ok"]  # --max-docs stops before the bad line


def test_max_chars_keeps_the_first_characters_in_file_order(tmp_path, capsys):
    """--max-chars: whole documents while they fit, the one that crosses the limit cut there, none after it."""
    path = assets.write_jsonl(["한국어 문장", "abcdefgh", "last"], tmp_path / "t.jsonl")
    assert read_texts(path, max_chars=9) == ["한국어 문장", "abc"]
    assert read_texts(path, max_chars=6) == ["한국어 문장"]
    assert read_texts(path, max_chars=100) == read_texts(path) == ["한국어 문장", "abcdefgh", "last"]
    with pytest.raises(SystemExit) as done:
        tool("--model", tmp_path, "--text", f"t={path}", "--max-chars", 0)
    assert done.value.code == 2 and "--max-chars must be at least 1, got 0" in capsys.readouterr().err
