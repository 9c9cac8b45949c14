"""tools/preprocess_data.py end to end on real Korean and English text: exact ids, every input format, bad
input (error by default, counted with --skip-bad), MPI ranks giving the same bytes, kill -9 and rerun."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from megaeeve.corpus import SKIP_REASONS
from megaeeve.data.indexed import IndexedDataset
from megaeeve.data.preprocess import PreprocessConfig, preprocess
from megaeeve.errors import PreprocessError
from megaeeve.tokenizer_io import load_tokenizer, tokenizer_fingerprint

REPO = Path(__file__).resolve().parents[1]
TOOL = str(REPO / "tools" / "preprocess_data.py")
EOS_ID = 50256
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _restore_rayon_env(monkeypatch):
    monkeypatch.setenv("RAYON_NUM_THREADS", "1")  # preprocess() sets it; put it back afterwards


def run_tool(*args: str, mpi: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, TOOL, *args]
    if mpi:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(mpi), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def expected_ids(tokenizer_dir: Path, docs: list[str], eod: bool = True) -> list[list[int]]:
    tok = load_tokenizer(tokenizer_dir)
    return [e.ids + ([EOS_ID] if eod else []) for e in tok.encode_batch(docs, add_special_tokens=False)]


def read_docs(prefix: Path) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    assert len(ds) == ds.num_documents  # one sequence per document
    return [ds[i].tolist() for i in range(len(ds))]


def run(tmp_path: Path, inputs: list, tokenizer: Path, name: str = "out", **kw) -> tuple[dict, Path]:
    prefix = tmp_path / name
    cfg = PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=str(prefix), tokenizer=str(tokenizer),
                           progress=False, **kw)
    return preprocess(cfg), prefix


def test_end_to_end_korean_and_english(tmp_path, gpt2_tokenizer_dir, korean_jsonl, english_jsonl, korean_split, english_docs):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset

    prefix = tmp_path / "out" / "ko_en"
    out = run_tool("--input", str(korean_jsonl), str(english_jsonl), "--output-prefix", str(prefix),
                   "--tokenizer", str(gpt2_tokenizer_dir), "--append-eod", "--workers", "2")
    assert "docs/s" in out.stderr and "tokens/s" in out.stderr  # the progress bar
    docs = korean_split[0] + english_docs
    want = expected_ids(gpt2_tokenizer_dir, docs)
    assert read_docs(prefix) == want
    theirs = MegatronDataset(str(prefix))
    assert [theirs[i].tolist() for i in (0, len(docs) - 1)] == [want[0], want[-1]]

    manifest = json.loads(Path(f"{prefix}.manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["eod_id"] == EOS_ID
    assert manifest["documents"]["read"] == manifest["documents"]["written"] == len(docs)
    assert manifest["documents"]["skipped"] == 0
    assert manifest["tokens_written"] == sum(map(len, want))
    assert manifest["tokenizer"]["sha256"] == tokenizer_fingerprint(load_tokenizer(gpt2_tokenizer_dir))
    for entry, path, n in zip(manifest["inputs"], (korean_jsonl, english_jsonl), (len(korean_split[0]), len(english_docs))):
        assert entry["path"] == str(path) and entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["documents_written"] == n
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["ko_en.bin", "ko_en.idx", "ko_en.manifest.json"]


BAD = [  # (line, reason); reason None = a good document
    ('{"text": "첫 번째 문서입니다."}', None),
    ('{"text": "broken', "invalid_json"),
    ('{"body": "no text"}', "missing_key"),
    ('{"text": ["not", "a", "string"]}', "not_a_string"),
    (b'{"text": "caf\xe9"}', "invalid_utf8"),
    ('{"text": "  "}', "empty"),
    ('{"text": "nul \\u0000 inside"}', "nul_byte"),
    ('{"text": "' + "long " * 40 + '"}', "too_long"),
    ('{"text": "The last good document."}', None),
]


def write_bad_corpus(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    jsonl = tmp_path / "in" / "bad.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x, _ in BAD))
    txt = tmp_path / "in" / "notes.txt"
    txt.write_text("한 줄짜리 문서\n\n   \nsecond line document\n", encoding="utf-8")
    good = [json.loads(x)["text"] for x, r in BAD if r is None] + ["한 줄짜리 문서", "second line document"]
    return jsonl, txt, good


def test_bad_input_is_an_error_by_default_and_counted_with_skip_bad(tmp_path, gpt2_tokenizer_dir):
    jsonl, txt, good = write_bad_corpus(tmp_path)
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:2: invalid_json"):
        run(tmp_path, [jsonl, txt], gpt2_tokenizer_dir, max_chars=100)
    for later in range(3, len(BAD)):  # each kind stops the run by itself, naming its line
        only = tmp_path / "in" / f"only{later}.jsonl"
        only.write_bytes(jsonl.read_bytes().split(b"\n")[0] + b"\n" + jsonl.read_bytes().split(b"\n")[later - 1] + b"\n")
        with pytest.raises(PreprocessError, match=rf"only{later}\.jsonl:2: {BAD[later - 1][1]}"):
            run(tmp_path, [only], gpt2_tokenizer_dir, max_chars=100)
    assert not list((tmp_path).glob("out*"))  # nothing that looks like a dataset

    cli = run_tool("--input", str(jsonl), "--output-prefix", str(tmp_path / "cli"), "--tokenizer",
                   str(gpt2_tokenizer_dir), "--max-chars", "100", check=False)
    assert cli.returncode == 2 and f"{jsonl}:2: invalid_json" in cli.stderr and "Traceback" not in cli.stderr

    manifest, prefix = run(tmp_path, [tmp_path / "in" / "bad.jsonl", txt], gpt2_tokenizer_dir, max_chars=100,
                           skip_bad=True, append_eod=True)
    skipped = manifest["documents"]["skipped_by_reason"]
    assert skipped == {r: 1 for r in SKIP_REASONS}  # each kind once ("  " in the .txt is a blank line)
    assert manifest["blank_lines"] == 2
    assert manifest["documents"]["read"] == len(good) + len(SKIP_REASONS)
    assert manifest["documents"]["written"] == len(good)
    assert manifest["documents"]["skipped_examples"]["too_long"][0].startswith(f"{jsonl}:8")
    assert manifest["inputs"][1]["blank_lines"] == 2 and manifest["inputs"][1]["documents_written"] == 2
    assert read_docs(prefix) == expected_ids(gpt2_tokenizer_dir, good)


def test_a_lone_surrogate_escape_is_invalid_utf8(tmp_path, gpt2_tokenizer_dir):
    """{"text": "\\ud800"} parses to a string no UTF-8 encoder takes: was a TypeError from the tokenizer."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "a\\ud800"}\n{"text": "pair \\ud83d\\ude00 fine"}\n', encoding="utf-8")
    with pytest.raises(PreprocessError, match=r"s\.jsonl:2: invalid_utf8: lone surrogate \\ud800"):
        run(tmp_path, [path], gpt2_tokenizer_dir)
    manifest, prefix = run(tmp_path, [path], gpt2_tokenizer_dir, skip_bad=True)
    assert manifest["documents"]["skipped_by_reason"]["invalid_utf8"] == 1
    assert read_docs(prefix) == expected_ids(gpt2_tokenizer_dir, ["ok", "pair \U0001F600 fine"], eod=False)


def test_formats_globs_and_multiple_files(tmp_path, phi2_tokenizer_dir, korean_split, english_docs):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    ko, en = korean_split[1][:120], english_docs[:12]
    lines = lambda docs: "".join(json.dumps({"content": d}, ensure_ascii=False) + "\n" for d in docs).encode()
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.jsonl.gz").write_bytes(gzip.compress(lines(ko[:40])))
    (d / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(ko[40:80])))
    (d / "c.txt").write_text("\n".join(ko[80:]) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"content": en}), d / "d.parquet", row_group_size=5)
    manifest, prefix = run(tmp_path, [d / "*.j*", d / "c.txt", d / "*.parquet"], phi2_tokenizer_dir, json_key="content")
    assert [i["path"] for i in manifest["inputs"]] == [str(d / n) for n in ("a.jsonl.gz", "b.jsonl.zst", "c.txt", "d.parquet")]
    assert read_docs(prefix) == expected_ids(phi2_tokenizer_dir, ko + en, eod=False)


def test_mpi_ranks_produce_the_same_bytes_as_one_process(tmp_path, gpt2_tokenizer_dir, korean_jsonl, english_jsonl):
    _, single = run(tmp_path, [korean_jsonl, english_jsonl], gpt2_tokenizer_dir, name="single", append_eod=True)
    mpi = tmp_path / "mpi"
    out = run_tool("--input", str(korean_jsonl), str(english_jsonl), "--output-prefix", str(mpi), "--tokenizer",
                   str(gpt2_tokenizer_dir), "--append-eod", "--shard-mb", "0.03", "--no-progress", mpi=2)
    assert out.stdout.count("documents") == 1  # only rank 0 reports
    for suffix in (".bin", ".idx"):
        assert Path(f"{mpi}{suffix}").read_bytes() == Path(f"{single}{suffix}").read_bytes()
    manifest = json.loads(Path(f"{mpi}.manifest.json").read_text())
    assert manifest["ranks"] == 2 and manifest["workers_per_rank"] == 1

    # a bad line in the last shard (rank 1's): every rank stops with the error, nothing is written
    bad = tmp_path / "bad.jsonl"
    lines = korean_jsonl.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines + ['{"text": "broken']) + "\n", encoding="utf-8")
    out = run_tool("--input", str(bad), "--output-prefix", str(tmp_path / "bad"), "--tokenizer",
                   str(gpt2_tokenizer_dir), "--shard-mb", "0.03", "--no-progress", mpi=2, check=False)
    assert out.returncode != 0 and f"{bad}:{len(lines) + 1}: invalid_json" in out.stderr
    assert not (tmp_path / "bad.idx").exists()


def test_kill_9_leaves_nothing_complete_and_a_rerun_resumes(tmp_path, gpt2_tokenizer_dir, korean_split):
    docs = korean_split[0] * 6  # ~1 MB: a few seconds on one thread, in ~20 shards
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
    prefix = tmp_path / "out" / "big"
    args = [sys.executable, TOOL, "--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer",
            str(gpt2_tokenizer_dir), "--workers", "1", "--shard-mb", "0.05", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = prefix.parent / ".big.parts"
    deadline = time.monotonic() + 120
    while len(list(work.glob("part-*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not any(Path(f"{prefix}{s}").exists() for s in (".bin", ".idx", ".manifest.json"))
    done = len(list(work.glob("part-*.json")))

    out = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert f"resuming, {done} of " in out.stderr
    manifest = json.loads(Path(f"{prefix}.manifest.json").read_text())
    assert manifest["documents"]["written"] == len(docs)
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["big.bin", "big.idx", "big.manifest.json"]
    ds = IndexedDataset(prefix)
    sample = list(range(0, len(docs), 97))
    want = expected_ids(gpt2_tokenizer_dir, [docs[i] for i in sample], eod=False)
    assert [ds[i].tolist() for i in sample] == want
    assert ds.num_tokens == manifest["tokens_written"]


def test_eod_token_comes_from_the_tokenizer_or_the_flag(tmp_path, gpt2_tokenizer_dir, korean_jsonl):
    bare = tmp_path / "bare" / "gpt2.json"  # a tokenizer file with no config beside it names no eos
    bare.parent.mkdir()
    shutil.copy(gpt2_tokenizer_dir / "tokenizer.json", bare)
    with pytest.raises(PreprocessError, match="--eod-token"):
        run(tmp_path, [korean_jsonl], bare, append_eod=True)
    with pytest.raises(PreprocessError, match="not in the vocabulary"):
        run(tmp_path, [korean_jsonl], bare, append_eod=True, eod_token="<eod>")
    manifest, prefix = run(tmp_path, [korean_jsonl], bare, append_eod=True, eod_token="<|endoftext|>")
    assert manifest["eod_id"] == EOS_ID
    ds = IndexedDataset(prefix)
    assert all(ds[i][-1] == EOS_ID for i in range(0, len(ds), 50))
    assert np.count_nonzero(np.asarray(ds[0:len(ds)][5]) == EOS_ID) == 1


def test_tiktoken_path_gives_identical_ids(tmp_path, gpt2_tokenizer_dir, phi2_tokenizer_dir, korean_split,
                                           english_docs, korean_jsonl, english_jsonl):
    from megaeeve.data.fast_bpe import tiktoken_batch_encoder

    tok = load_tokenizer(gpt2_tokenizer_dir)
    tricky = ["a<|endoftext|>b", "  x\n\n\t 123 ’s we'll DON'T 4567", "😀 é\u00a0z\r\n", " " * 40 + "end", "ｆｕｌｌ 가나 ㄱ"]
    docs = korean_split[0] + korean_split[1] + english_docs + tricky
    assert tiktoken_batch_encoder(tok, 2)(docs) == [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]

    _, hf = run(tmp_path, [korean_jsonl, english_jsonl], gpt2_tokenizer_dir, name="hf", append_eod=True)
    manifest, tt = run(tmp_path, [korean_jsonl, english_jsonl], gpt2_tokenizer_dir, name="tt", append_eod=True,
                       tiktoken=True)
    assert manifest["tokenizer"]["encoder"] == "tiktoken"
    for suffix in (".bin", ".idx"):
        assert Path(f"{tt}{suffix}").read_bytes() == Path(f"{hf}{suffix}").read_bytes()
    with pytest.raises(PreprocessError, match="not a plain special token.*without --tiktoken"):
        run(tmp_path, [korean_jsonl], phi2_tokenizer_dir, name="phi2", tiktoken=True)


def test_tiktoken_refuses_merges_where_ids_differ():
    """Merges a+b, b+c, a+bc on "abc": Hugging Face stops at [ab, c], tiktoken would go on to [abc]. Was accepted."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from megaeeve.data.fast_bpe import byte_symbols, tiktoken_encoding
    from megaeeve.errors import NotEligible

    byte_of = byte_symbols()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_of, key=byte_of.get))}
    vocab.update({"ab": 256, "bc": 257, "abc": 258})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("b", "c"), ("a", "bc")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert tok.encode("abc").tokens == ["ab", "c"]
    with pytest.raises(NotEligible, match=r"token 'abc' tokenizes to \['ab', 'c'\]"):
        tiktoken_encoding(tok)


def test_tiktoken_gives_identical_ids_on_an_expanded_gpt2(korean_split, english_docs):
    from megaeeve import assets
    from megaeeve.data.fast_bpe import tiktoken_batch_encoder
    from megaeeve.vocab.family import detect_family
    from megaeeve.vocab.intermediate import target_candidates, train_intermediate
    from megaeeve.vocab.merge import build_target
    from megaeeve.vocab.scripts import parse_script

    base, hangul = assets.gpt2_tokenizer(), parse_script("hangul")
    family = detect_family(base)
    intermediate = train_intermediate(base, family, docs=korean_split[0], vocab_size=2000)
    target = build_target(base, family, script=hangul, pieces=target_candidates(intermediate, base, family,
                          hangul)).tokenizer
    docs = korean_split[0] + korean_split[1] + english_docs + ["한국어Hello 가나다라마바사 ㄱㄴ 읽었다", "a<|endoftext|>한"]
    ids = tiktoken_batch_encoder(target, 2)(docs)
    assert ids == [e.ids for e in target.encode_batch(docs, add_special_tokens=False)]
    assert max(max(i) for i in ids) > 50257  # the new tokens are used


def test_vocabulary_over_65536_is_written_as_int32(tmp_path, english_docs):
    from megaeeve import assets

    tok = assets.gpt2_tokenizer()
    tok.add_tokens([f"<extra_{i}>" for i in range(16_000)])  # ids up to 66,256
    tok.save(str(tmp_path / "big.json"))
    docs = english_docs[:3] + ["before <extra_15999> after", "<extra_0>"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    manifest, prefix = run(tmp_path, [corpus], tmp_path / "big.json")
    assert manifest["dtype"] == "int32" and manifest["tokenizer"]["vocab_size"] == 66_257
    written = read_docs(prefix)
    assert written == [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    assert 50_257 + 15_999 in written[3] and IndexedDataset(prefix).dtype == np.int32


def jsonl_bytes(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()


def tool_error(*args: str) -> str:
    """Run the tool on bad input: exit 2 and a single `error:` line, no traceback; returns that line."""
    out = run_tool(*args, "--no-progress", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    return out.stderr


def test_a_damaged_compressed_input_stops_the_run_even_with_skip_bad(tmp_path, gpt2_tokenizer_dir, korean_split):
    """A partial download is never a shorter dataset: exit 2 naming the file, no output, no work directory."""
    import zstandard

    payload = jsonl_bytes(korean_split[0][:300])
    zst, gz = zstandard.ZstdCompressor().compress(payload), gzip.compress(payload)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data, message in [
        ("cut.jsonl.zst", zst[: len(zst) * 2 // 3], "truncated zstd stream"),  # mid-line: was one skipped record
        ("cut.jsonl.gz", gz[: len(gz) // 2], "truncated gzip stream"),
        ("bad.jsonl.zst", b"not zstd at all\n", "corrupt zstd stream"),
    ]:
        (inputs / name).write_bytes(data)
        err = tool_error("--input", str(inputs / name), "--output-prefix", str(tmp_path / "out"), "--tokenizer",
                         str(gpt2_tokenizer_dir), "--skip-bad")
        assert f"error: {inputs / name}: {message}" in err and "--skip-bad cannot help" in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def small_corpus(tmp_path: Path, korean_split, n: int = 20) -> list[str]:
    corpus = tmp_path / "a.jsonl"
    corpus.write_bytes(jsonl_bytes(korean_split[0][:n]))
    return ["--input", str(corpus)]


def test_an_unwritable_output_is_one_error_line(tmp_path, gpt2_tokenizer_dir, korean_split):
    common = [*small_corpus(tmp_path, korean_split), "--tokenizer", str(gpt2_tokenizer_dir)]
    (tmp_path / "file").write_text("x")  # an output below a regular file fails for root too
    err = tool_error(*common, "--output-prefix", str(tmp_path / "file" / "out"))
    assert f"error: {tmp_path / 'file'}: cannot write the output there" in err


def test_an_output_prefix_naming_a_directory_is_refused(tmp_path, gpt2_tokenizer_dir, korean_split):
    common = [*small_corpus(tmp_path, korean_split), "--tokenizer", str(gpt2_tokenizer_dir)]
    err = tool_error(*common, "--output-prefix", f"{tmp_path / 'data'}/")
    assert "names files (PREFIX.bin, PREFIX.idx), not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_an_existing_dataset_is_replaced_only_with_overwrite(tmp_path, gpt2_tokenizer_dir, korean_split):
    common = [*small_corpus(tmp_path, korean_split), "--tokenizer", str(gpt2_tokenizer_dir),
              "--output-prefix", str(tmp_path / "ds")]
    run_tool(*common, "--no-progress")
    err = tool_error(*common)
    assert f"error: {tmp_path / 'ds.bin'}, {tmp_path / 'ds.idx'}, " in err and "pass --overwrite" in err
    small_corpus(tmp_path, korean_split, 5)
    run_tool(*common, "--no-progress", "--overwrite")
    assert len(IndexedDataset(tmp_path / "ds")) == 5


def test_an_input_without_documents_is_refused(tmp_path, gpt2_tokenizer_dir, korean_split):
    import zstandard

    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl_bytes(korean_split[0][:5]))
    for name, data, what in [
        ("empty.jsonl", b"", "no records"),
        ("blank.txt", b"\n  \n\n", "only blank lines"),
        ("empty.jsonl.zst", zstandard.ZstdCompressor().compress(b""), "no records"),
        ("empty.jsonl.gz", b"", "no records"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PreprocessError, match=rf"{name}: no documents \({what}\)"):
            run(tmp_path, [good, tmp_path / name], gpt2_tokenizer_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": 1}\n{"body": "x"}\n')
    with pytest.raises(PreprocessError, match=r"bad\.jsonl: no document written: all 2 were bad"):
        run(tmp_path, [bad], gpt2_tokenizer_dir, skip_bad=True)
    assert not list(tmp_path.glob("out.*"))


@pytest.mark.parametrize("flag,value", [("--shard-mb", "0"), ("--shard-mb", "-1"), ("--shard-mb", "nan"),
                                        ("--workers", "-1"), ("--workers", "0"), ("--max-chars", "0")])
def test_numeric_flags_out_of_range_are_usage_errors(tmp_path, flag, value):
    out = run_tool("--input", "x.jsonl", "--output-prefix", str(tmp_path / "o"), "--tokenizer", "t", flag, value,
                   check=False)
    assert out.returncode == 2 and f"error: argument {flag}: expected a positive" in out.stderr.splitlines()[-1]


def test_a_failed_run_says_where_its_finished_shards_are_and_how_to_resume(tmp_path, gpt2_tokenizer_dir, korean_split):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(jsonl_bytes(korean_split[0][:200]) + b'{"text": "cut\n')
    shard_bytes = corpus.stat().st_size // 3 + 1  # three shards, the bad line in the last
    work = tmp_path / ".out.parts"
    for attempt in range(2):  # the rerun resumes from the same shards and stops at the same line
        with pytest.raises(PreprocessError, match=rf"c\.jsonl:201: invalid_json.* \[{work}/ keeps 2 finished "
                           r"shard\(s\): rerunning the same command resumes from them"):
            run(tmp_path, [corpus], gpt2_tokenizer_dir, shard_bytes=shard_bytes)
        assert sorted(p.name for p in work.iterdir())[-2:] == ["part-000001.json", "plan.json"]


def test_megatron_spellings_several_json_keys_write_one_dataset_each(tmp_path, gpt2_tokenizer_dir):
    """--tokenizer-model and several --json-keys, as users type them from Megatron-LM's preprocess_data.py:
    one dataset per key, PREFIX_KEY_document."""
    rows = [{"title": f"title {i}", "body": f"body text number {i}"} for i in range(5)]
    corpus = tmp_path / "two.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_tool("--input", str(corpus), "--output-prefix", str(tmp_path / "out"), "--tokenizer-model",
             str(gpt2_tokenizer_dir), "--json-keys", "title", "body", "--append-eod", "--no-progress")
    for key in ("title", "body"):
        assert read_docs(tmp_path / f"out_{key}_document") == expected_ids(gpt2_tokenizer_dir, [r[key] for r in rows])
