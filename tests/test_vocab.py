"""Vocabulary expansion pieces: scripts, merge safety, the merge builder, counting under MPI, bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from megaeeve import assets
from megaeeve.errors import CorpusError, ExpansionError, UnsupportedTokenizer
from megaeeve.vocab import ExpandConfig, expand_vocab
from megaeeve.vocab.count import count_corpus
from megaeeve.vocab.family import detect_family
from megaeeve.vocab.merge import build_target
from megaeeve.vocab.refine import Threshold, refine
from megaeeve.vocab.scripts import parse_script
from tests.conftest import PYTHON, REPO

HANGUL = parse_script("hangul")


def test_script_names_and_ranges():
    assert HANGUL.is_target_text(" 한국어") and HANGUL.is_target_text("ㅋㅋ")
    assert not HANGUL.is_target_text("한국a") and not HANGUL.is_target_text("  한") and not HANGUL.is_target_text(" ")
    thai = parse_script("U+0E00-U+0E7F")
    assert thai.is_target_text("ภาษา") and not thai.is_target_text("한")
    with pytest.raises(ValueError, match="klingon"):
        parse_script("klingon")


def test_partial_prefixes_owned_only_when_every_completion_is_hangul():
    assert HANGUL.owns_all_completions("한".encode()[:2])  # U+D540-U+D57F: all syllables
    assert HANGUL.owns_all_completions("한".encode()[:1])  # ED: syllables, Jamo Ext-B (surrogates never occur)
    assert not HANGUL.owns_all_completions("가".encode()[:1])  # EA also starts Yi, Vai, Lisu ...
    assert not HANGUL.owns_all_completions("ㆍ".encode()[:2])  # U+3180-U+31BF also holds Kanbun, Bopomofo


def test_merge_safety_on_byte_pieces():
    family = detect_family(assets.gpt2_tokenizer())
    piece = family.text_piece
    assert family.merge_is_safe(piece("한"), HANGUL) and family.merge_is_safe(piece(" 한국"), HANGUL)
    assert family.merge_is_safe(piece("한")[:2], HANGUL)  # ED 95: only syllables start so
    assert not family.merge_is_safe(piece("한")[1:], HANGUL)  # 95 9C ends characters of any script
    assert not family.merge_is_safe(piece("가")[:1], HANGUL) and not family.merge_is_safe(piece(" a"), HANGUL)


@pytest.mark.parametrize("model", [models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"), models.Unigram([("a", -1.0)], 0, False)])
def test_unsupported_model_is_named(model):
    with pytest.raises(UnsupportedTokenizer, match=type(model).__name__):
        detect_family(Tokenizer(model))


def test_build_target_reaches_each_piece_with_merges_only_after_base_ones():
    base = assets.gpt2_tokenizer()
    family = detect_family(base)
    pieces = [family.text_piece(t) for t in (" 대한민국", "한국", "국어", " 한국어", "ㆍ")]
    target = build_target(base, family, script=HANGUL, pieces=pieces)
    assert target.base_vocab_size == 50257 and [n.id for n in target.new] == list(range(50257, 50257 + len(target.new)))
    assert target.unreachable == [family.text_piece("ㆍ")]
    assert {n.piece for n in target.new if n.kind == "selected"} == set(pieces[:-1])
    for n in target.new:
        assert [t.value for t in target.tokenizer.model.tokenize(n.piece)] == [n.piece]
    spec, base_spec = json.loads(target.json()), json.loads(base.to_str())
    assert spec["model"]["merges"][:50000] == base_spec["model"]["merges"]
    tokens = target.tokenizer.encode(" 한국어는 Korean").tokens
    assert tokens == [family.text_piece(" 한국어")] + base.encode("는").tokens + ["ĠKorean"]


def test_thresholds_follow_the_card_words(tmp_path):
    """Tokens seen "less than" the threshold go, one seen exactly threshold times stays; a missing character is
    added when seen "more than" the threshold (was: at least)."""
    base = assets.gpt2_tokenizer()
    family = detect_family(base)
    docs = [" 한국"] * 3 + [" 대학"] * 2 + ["가"] * 3 + ["나"] * 4  # threshold 3
    corpus = assets.write_jsonl(docs, tmp_path / "count.jsonl")
    result = refine(base, family, script=HANGUL, candidates=[family.text_piece(" 한국"), family.text_piece(" 대학")],
                    count_files=[str(corpus)], threshold=Threshold(count=3), progress=False,
                    log=lambda *a: None)  # fmt: skip
    selected = {n.text for n in result.target.new if n.kind == "selected"}
    assert selected == {" 한국", "나"}  # " 대학" (2) dropped, "가" (exactly 3) not added, "나" (4) added
    assert result.rounds[0].added == ["나"] and " 대학" in result.rounds[0].dropped
    assert result.counts.token_counts[result.target.tokenizer.token_to_id(family.text_piece(" 한국"))] == 3


def test_counts_sum_over_mpi_ranks(tmp_path, korean_jsonl):
    """`mpiexec -n 2`: each rank counts part of the corpus, the totals equal a one-process count."""
    tok = assets.gpt2_tokenizer()
    tok.save(str(tmp_path / "tok.json"))
    single = count_corpus(tok, [str(korean_jsonl)], script=HANGUL, batch_bytes=4096, progress=False)
    script = (
        "import sys, numpy as np; from tokenizers import Tokenizer; from mpi4py import MPI;"
        "from megaeeve.vocab.count import count_corpus; from megaeeve.vocab.scripts import parse_script;"
        f"c = count_corpus(Tokenizer.from_file({str(tmp_path / 'tok.json')!r}), [{str(korean_jsonl)!r}],"
        " script=parse_script('hangul'), batch_bytes=4096, progress=False);"
        f"MPI.COMM_WORLD.Get_rank() == 0 and np.savez({str(tmp_path / 'mpi.npz')!r}, tokens=c.token_counts,"
        " chars=np.array([c.char_counts.get(ch, 0) for ch in sys.argv[1]]), docs=c.documents)"
    )
    chars = "".join(single.char_counts)
    proc = subprocess.run(
        [str(Path(PYTHON).parent / "mpiexec"), "-n", "2", PYTHON, "-c", script, chars],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "mpi.npz")
    assert np.array_equal(got["tokens"], single.token_counts)
    assert got["chars"].tolist() == list(single.char_counts.values())
    assert int(got["docs"]) == single.documents == 2232


def _assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("empty", CorpusError, "has no documents"),
        ("invalid_utf8", CorpusError, r"bad\.jsonl:3: invalid_utf8"),
        ("lone_surrogate", CorpusError, r"s\.jsonl:2: invalid_utf8: lone surrogate"),  # was a TypeError in training
        ("cut_zst", CorpusError, r"ko\.jsonl\.zst: truncated zstd stream"),  # counted on, found while counting
        ("threshold", ExpansionError, "nothing to add.*minimum frequency 1000000"),
        ("wordpiece", UnsupportedTokenizer, "'WordPiece'"),
    ],
)
def test_bad_input_clear_error_no_output(case, error, message, tmp_path, phi2_tokenizer_dir, korean_jsonl):
    base, corpus, count, min_freq = str(phi2_tokenizer_dir), [str(korean_jsonl)], None, 5
    if case == "empty":
        (tmp_path / "empty.jsonl").write_bytes(b"")
        corpus = [str(tmp_path / "empty.jsonl")]
    elif case == "invalid_utf8":  # found while counting, after the intermediate tokenizer is trained
        (tmp_path / "bad.jsonl").write_bytes(b'{"text": "\xec\x95\x88"}\n{"text": "ok"}\n{"text": "\xec\x95"}\n')
        count = [str(tmp_path / "bad.jsonl")]
    elif case == "lone_surrogate":  # found while training the intermediate tokenizer
        (tmp_path / "s.jsonl").write_bytes(b'{"text": "\xed\x95\x9c"}\n{"text": "\\udc00"}\n')
        corpus = [str(tmp_path / "s.jsonl")]
    elif case == "cut_zst":  # a partial download: was read as a shorter corpus
        import zstandard

        data = zstandard.ZstdCompressor().compress(korean_jsonl.read_bytes())
        (tmp_path / "ko.jsonl.zst").write_bytes(data[: len(data) - 100])
        count = [str(tmp_path / "ko.jsonl.zst")]
    elif case == "threshold":
        min_freq = 1_000_000
    elif case == "wordpiece":
        tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(tmp_path / "wp.json"))
        base = str(tmp_path / "wp.json")
    out = tmp_path / "out"
    cfg = ExpandConfig(base, corpus, str(out), intermediate_vocab_size=1000, min_frequency=min_freq,
                       count_corpus=count, progress=False)  # fmt: skip
    with pytest.raises(error, match=message):
        expand_vocab(cfg, log=lambda *a: None)
    _assert_no_output(out)


def test_cli_reports_error_and_exit_code(tmp_path, phi2_tokenizer_dir, english_jsonl):
    """A corpus with no Korean: exit code 2, a one-line error, no output."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [PYTHON, "tools/expand_vocab.py", "--base-tokenizer", str(phi2_tokenizer_dir), "--corpus", str(english_jsonl),
         "--output", str(out), "--intermediate-vocab-size", "1000", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "error: nothing to add" in proc.stderr, proc.stderr
    _assert_no_output(out)
    help_text = subprocess.run([PYTHON, "tools/expand_vocab.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "--min-frequency-per-million" in help_text.stdout


@pytest.mark.parametrize("name, data, message", [
    ("ko.jsonl.gz", gzip.compress(b'{"text": "\xed\x95\x9c"}\n' * 500)[:-20], "truncated gzip stream"),
    ("ko.jsonl.zst", b"not zstd at all\n", "corrupt zstd stream"),
], ids=["cut_gz", "corrupt_zst"])
def test_cli_damaged_compressed_corpus_is_one_error_line(tmp_path, phi2_tokenizer_dir, name, data, message):
    """Was a raw EOFError / ZstdError traceback with exit 1, not naming the file."""
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    proc = subprocess.run(
        [PYTHON, "tools/expand_vocab.py", "--base-tokenizer", str(phi2_tokenizer_dir), "--corpus", str(tmp_path / name),
         "--output", str(out), "--intermediate-vocab-size", "1000", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"error: {tmp_path / name}: {message}" in proc.stderr and "--skip-bad cannot help" in proc.stderr
    _assert_no_output(out)


@pytest.mark.parametrize("flag, value", [("--workers", "-1"), ("--workers", "0"), ("--intermediate-vocab-size", "0"),
                                         ("--intermediate-sample-bytes", "0"),
                                         ("--min-frequency", "-5"), ("--min-frequency-per-million", "0")])
def test_cli_numeric_flags_out_of_range_are_usage_errors(tmp_path, flag, value):
    proc = subprocess.run(
        [PYTHON, "tools/expand_vocab.py", "--base-tokenizer", "b", "--corpus", "c.jsonl", "--output", str(tmp_path / "o"),
         flag, value], cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and f"error: argument {flag}: expected a positive" in proc.stderr, proc.stderr


def test_existing_output_is_refused(tmp_path, phi2_tokenizer_dir, korean_jsonl):
    (tmp_path / "out").mkdir()
    cfg = ExpandConfig(str(phi2_tokenizer_dir), [str(korean_jsonl)], str(tmp_path / "out"), progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        expand_vocab(cfg, log=lambda *a: None)
    assert list((tmp_path / "out").iterdir()) == []
