"""Vocabulary expansion end to end, on three bases: phi-2 (GPT-2 byte-level BPE + 38 added whitespace
tokens), SmolLM2 (byte-level BPE from a gguf file) and a Llama-style BPE with byte fallback."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from megaeeve import assets
from megaeeve.tokenizer_io import tokenizer_fingerprint
from megaeeve.vocab import ExpandConfig, expand_vocab
from megaeeve.vocab.family import detect_family
from megaeeve.vocab.scripts import parse_script
from tests._vocab_helpers import llama_style_tokenizer, load_json, non_target_texts, probe_texts, python_sources
from tests.conftest import PYTHON, REPO

HANGUL = parse_script("hangul")
MIN_FREQ = 5  # the corpus is tiny (~52k characters)
PER_MILLION = 150.0  # the Llama-style base uses the rate form: about 5 of its ~30k tokens
INTERMEDIATE = 3000


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer, read from the gguf once and saved as a Hugging Face directory."""
    gguf = assets.smollm2_gguf()
    hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    hf.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def llama_tokenizer_dir(tmp_path_factory, english_docs, korean_split) -> Path:
    """A Llama-style base that already knows a little Korean (a few hundred characters' worth)."""
    tok = llama_style_tokenizer(english_docs + korean_split[0][:15])
    return assets.save_hf_tokenizer(tok, tmp_path_factory.mktemp("llama-tokenizer"), eos="</s>", bos="<s>")


@pytest.fixture(scope="session")
def held_out_jsonl(tmp_path_factory, korean_split) -> Path:
    return assets.write_jsonl(korean_split[1], tmp_path_factory.mktemp("corpus") / "ko-held.jsonl")


def _run_cli(base: Path, out: Path, korean_jsonl, held_out_jsonl, english_jsonl, workers: int, freq: list[str]) -> str:
    cmd = [
        PYTHON, "tools/expand_vocab.py", "--base-tokenizer", str(base), "--corpus", str(korean_jsonl),
        "--output", str(out), "--intermediate-vocab-size", str(INTERMEDIATE), *freq,
        "--held-out", str(held_out_jsonl), "--english", str(english_jsonl), "--workers", str(workers), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module", params=["phi2", "smollm2", "llama"])
def expanded(request, module_tmp, korean_jsonl, held_out_jsonl, english_jsonl):
    """(base dir, expanded dir, stdout) for each base, built by the command-line tool."""
    base = request.getfixturevalue(f"{request.param}_tokenizer_dir")
    out = module_tmp(f"expanded-{request.param}") / "tok"
    # phi-2 counts with two processes (and is compared with a one-process run below); the others with one
    workers = 2 if request.param == "phi2" else 1
    freq = ["--min-frequency-per-million", str(PER_MILLION)] if request.param == "llama" else ["--min-frequency", str(MIN_FREQ)]
    stdout = _run_cli(base, out, korean_jsonl, held_out_jsonl, english_jsonl, workers, freq)
    return base, out, stdout


def _backend(path: Path) -> Tokenizer:
    return AutoTokenizer.from_pretrained(str(path)).backend_tokenizer


def test_base_ids_kept_new_ids_contiguous_after_base(expanded):
    base_dir, out, _ = expanded
    base, new = AutoTokenizer.from_pretrained(str(base_dir)), AutoTokenizer.from_pretrained(str(out))
    report = load_json(out / "expansion_report.json")
    base_vocab, new_vocab = base.get_vocab(), new.get_vocab()
    assert report["base_vocab_size"] == len(base_vocab) == max(base_vocab.values()) + 1
    assert all(new_vocab[token] == i for token, i in base_vocab.items())
    added = sorted(i for t, i in new_vocab.items() if t not in base_vocab)
    assert added == list(range(len(base_vocab), len(new_vocab)))
    ids = report["new_token_ids"]
    assert (ids["first"], ids["last"], ids["count"]) == (len(base_vocab), len(new_vocab) - 1, len(added))
    assert [t["id"] for t in report["new_tokens"]] == added
    assert (new.bos_token, new.eos_token, new.unk_token) == (base.bos_token, base.eos_token, base.unk_token)
    if "phi2" in str(base_dir):
        assert report["base_vocab_size"] == 50295


def test_new_tokens_are_bpe_entries_not_added_tokens(expanded):
    base_dir, out, _ = expanded
    base, new = load_json(base_dir / "tokenizer.json"), load_json(out / "tokenizer.json")
    report = load_json(out / "expansion_report.json")
    assert new["added_tokens"] == base["added_tokens"]
    assert new["model"]["merges"][: len(base["model"]["merges"])] == base["model"]["merges"]
    assert len(new["model"]["merges"]) > len(base["model"]["merges"])
    for token in report["new_tokens"]:
        assert new["model"]["vocab"][token["token"]] == token["id"]


def test_text_without_target_characters_tokenizes_as_base(expanded, english_docs):
    base_dir, out, _ = expanded
    base, new = _backend(base_dir), _backend(out)
    texts = english_docs + python_sources() + non_target_texts(HANGUL)
    for a, b, text in zip(base.encode_batch(texts), new.encode_batch(texts), texts):
        assert a.ids == b.ids, text[:80]


def test_every_new_token_is_emitted_on_some_text(expanded):
    base_dir, out, _ = expanded
    new = _backend(out)
    family = detect_family(new)
    report = load_json(out / "expansion_report.json")
    texts = [p for t in report["new_tokens"] for p in probe_texts(family, t["token"])]
    emitted = {i for e in new.encode_batch(texts, add_special_tokens=False) for i in e.ids}
    missing = [t["token"] for t in report["new_tokens"] if t["id"] not in emitted]
    assert not missing


def test_decode_encode_round_trips_mixed_text(expanded, korean_split, english_docs):
    _, out, _ = expanded
    new = AutoTokenizer.from_pretrained(str(out))
    code = python_sources()[2][:3000]
    texts = korean_split[1][:40] + [
        f"{ko} {en[:200]} {ko[:30]}한국어Hello{ko[-20:]}" for ko, en in zip(korean_split[1], english_docs)
    ] + [f"# 주석: {code}"]
    for text in texts:
        assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text


def test_korean_far_better_english_identical(expanded):
    _, out, _ = expanded
    cpt = load_json(out / "expansion_report.json")["chars_per_token"]
    base_cpt, new_cpt = cpt["held_out"]["base_chars_per_token"], cpt["held_out"]["expanded_chars_per_token"]
    if "llama" in str(out):  # this base already has a token for many Korean characters
        assert base_cpt > 0.7 and new_cpt > 2 * base_cpt
    else:  # GPT-2 / SmolLM2 spend about two tokens per Hangul syllable
        assert base_cpt < 0.6 and new_cpt > 3 * base_cpt
    assert cpt["english"]["identical_ids"]
    assert cpt["english"]["expanded_tokens"] == cpt["english"]["base_tokens"]


def test_report_rounds_and_frequencies_match_a_recount(expanded, korean_split):
    base_dir, out, stdout = expanded
    report = load_json(out / "expansion_report.json")
    rounds, limit = report["rounds"], report["settings"]["resolved_min_frequency"]
    if report["settings"]["min_frequency_per_million"] is not None:  # applied to round 1's token count
        assert limit == -(-PER_MILLION * rounds[0]["tokens_counted"] // 1_000_000) > 1
    else:
        assert limit == MIN_FREQ
    assert all(r["threshold"] == limit for r in rounds)
    assert rounds[-1]["dropped"] == [] and rounds[-1]["added"] == []
    assert len(rounds) >= 2 and rounds[0]["dropped"]  # the first round does drop rare tokens
    assert all(f"round {r['round']}:" in stdout for r in rounds)
    assert report["base_tokenizer"]["fingerprint"] == tokenizer_fingerprint(_backend(base_dir))
    new = _backend(out)
    counts = collections.Counter(i for e in new.encode_batch(korean_split[0], add_special_tokens=False) for i in e.ids)
    chars = collections.Counter(c for d in korean_split[0] for c in d)
    for token in report["new_tokens"]:
        assert token["frequency"] == counts[token["id"]], token
        if token["kind"] == "selected":  # frequent enough itself, or a single character seen more than limit times
            assert token["frequency"] >= limit or chars[token["text"]] > limit, token
    vocab, family = new.get_vocab(), detect_family(new)
    missing_chars = [c for c, n in chars.items() if HANGUL.contains(c) and n > limit and family.text_piece(c) not in vocab]
    assert set(missing_chars) <= set(report["unreachable"])  # ㆍ (U+318D): see test_vocab.py


def test_every_new_token_is_frequent_or_accounted_for_and_dropped_ones_are_gone(expanded):
    """At or above the threshold, or a single character seen more than threshold times (step 6), or a bridge
    listed with its count and the selected tokens it serves; no round's `dropped` names a final token.
    Was: bridges skipped the threshold unlisted, and `dropped` named tokens that came back as bridges."""
    _, out, _ = expanded
    report = load_json(out / "expansion_report.json")
    limit = report["settings"]["resolved_min_frequency"]
    final = {t["text"] or t["token"]: t for t in report["new_tokens"]}
    selected = {t for t, entry in final.items() if entry["kind"] == "selected"}
    low = [t for t in report["new_tokens"] if t["frequency"] < limit]
    for t in low:
        if t["kind"] == "bridge":
            assert t["serves"] and set(t["serves"]) <= selected, t
        else:
            assert len(t["text"]) == 1 and t["character_frequency"] > limit, t
    bridges = sum(t["kind"] == "bridge" for t in low)
    assert report["below_threshold"] == {"tokens": len(low), "bridges": bridges, "characters": len(low) - bridges}
    rounds = report["rounds"]
    assert not {d for r in rounds for d in r["dropped"]} & set(final)
    for i, r in enumerate(rounds):  # a rare piece kept as a bridge stays one, or leaves in a later round's dropped
        later = {d for r2 in rounds[i + 1 :] for d in r2["dropped"]}
        assert all(k in later or final[k]["kind"] == "bridge" for k in r["kept_as_bridges"])
    kept = {k for r in rounds for k in r["kept_as_bridges"]}
    if "phi2" in str(out):
        assert kept and bridges  # the paths are exercised


@pytest.mark.parametrize("expanded", ["phi2"], indirect=True)
def test_same_inputs_give_byte_identical_tokenizer(expanded, korean_jsonl, tmp_path):
    """In-process, one counting process vs the command line with two: same tokenizer.json bytes."""
    base_dir, out, _ = expanded
    cfg = ExpandConfig(
        str(base_dir), [str(korean_jsonl)], str(tmp_path / "again"),
        intermediate_vocab_size=INTERMEDIATE, min_frequency=MIN_FREQ, progress=False,
    )  # fmt: skip
    expand_vocab(cfg, log=lambda *a: None)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    again = load_json(tmp_path / "again" / "expansion_report.json")
    assert again["new_tokens"] == load_json(out / "expansion_report.json")["new_tokens"]
