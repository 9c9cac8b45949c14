"""The corpus reader: every line/row exactly once, in order, with its location; all formats; bad records."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from megaeeve.corpus import (
    Shard, expand_inputs, iter_documents, iter_records, iter_texts, plan_shards, sample_documents,
)
from megaeeve.errors import CorpusError


def write_lines(path, lines: list[bytes], newline: bytes = b"\n", trailing: bool = True) -> None:
    data = newline.join(lines) + (newline if trailing else b"")
    path.write_bytes(data)


@pytest.mark.parametrize("newline,trailing", [(b"\n", True), (b"\r\n", True), (b"\n", False)])
def test_shards_cover_every_line_exactly_once(tmp_path, korean_split, newline, trailing):
    docs = korean_split[0][:300]
    lines = [json.dumps({"text": d}, ensure_ascii=False).encode() for d in docs]
    lines[10] = b""  # a blank line is a record too
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_lines(a, lines, newline, trailing)
    write_lines(b, lines[:7], newline, trailing)
    expected = [(str(a), i + 1) for i in range(len(lines))] + [(str(b), i + 1) for i in range(7)]
    for n in (1, 2, 3, 7, 40, 1000):
        shards = plan_shards([str(a), str(b)], n)
        got = [(r.path, r.location()) for s in shards for r in iter_records(s)]
        assert [loc for _, loc in got] == [f"{p}:{line}" for p, line in expected], n
        # documents come back exactly, without the line ending
        texts = [r.text for s in shards for r in iter_records(s) if r.text is not None]
        assert texts == [d for i, d in enumerate(docs) if i != 10] + docs[:7]
    assert len(plan_shards([str(a), str(b)], 40)) > 20


def test_compressed_and_table_inputs_give_the_same_documents(tmp_path, english_docs):
    import pyarrow as pa
    import pyarrow.ipc
    import zstandard

    docs = english_docs[:30]
    payload = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    txt_docs = [" ".join(d.split()) for d in docs]  # one line each
    (tmp_path / "c.txt").write_text("\n\n".join(txt_docs) + "\n", encoding="utf-8")
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    with pyarrow.ipc.new_file(str(tmp_path / "file.arrow"), table.schema) as w:
        w.write_table(table)
    import datasets

    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))  # IPC stream, as `datasets` writes it
    stream = next((tmp_path / "saved").glob("*.arrow"))

    for path in ("c.jsonl.gz", "c.jsonl.zst", "c.parquet", "file.arrow", stream):
        assert list(iter_documents([str(tmp_path / path)])) == docs, path
    recs = list(iter_records(str(tmp_path / "c.txt")))
    assert [r.text for r in recs if r.text] == txt_docs
    assert sum(r.reason == "blank_line" for r in recs) == len(docs) - 1
    assert recs[1].location() == f"{tmp_path / 'c.txt'}:2"
    assert [r.location() for r in iter_records(str(tmp_path / "c.parquet"))][8] == f"{tmp_path / 'c.parquet'} row 9"
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(iter_records(str(tmp_path / "c.parquet"), key="body"))
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(iter_records(str(stream), key="body"))
    # compressed files and tables are never split
    assert len(plan_shards([str(tmp_path / "c.jsonl.gz"), str(tmp_path / "c.parquet")], 10)) == 2


def test_reading_parquet_exits_cleanly(tmp_path):
    """Regression: a `datasets` streaming iterator over parquet aborted the interpreter at exit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["가나다", "hello"]}), tmp_path / "t.parquet")
    code = "import sys; from megaeeve.corpus import iter_documents; print(list(iter_documents([sys.argv[1]])))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.parquet")], capture_output=True, text=True)
    assert out.returncode == 0 and "terminate called" not in out.stderr, out.stderr
    assert out.stdout.strip() == "['가나다', 'hello']"


BAD_LINES = [
    (b'{"text": "fine"}', None),
    (b'{"text": "broken', "invalid_json"),
    (b'{"body": "no text key"}', "missing_key"),
    (b'["a list"]', "missing_key"),
    (b'{"text": 42}', "not_a_string"),
    (b'{"text": null}', "not_a_string"),
    (b'{"text": "caf\xe9"}', "invalid_utf8"),
    (b'{"text": "   "}', "empty"),
    (b"", "empty"),
    (b'{"text": "a\\u0000b"}', "nul_byte"),
    (b'{"text": "' + b"x" * 50 + b'"}', "too_long"),
    (b'{"text": "\xed\x95\x9c\xea\xb8\x80 ok"}', None),
]


def test_every_bad_record_kind_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [line for line, _ in BAD_LINES])
    recs = list(iter_records(str(path), max_chars=40))
    assert [r.reason for r in recs] == [reason for _, reason in BAD_LINES]
    assert [r.text for r in recs if r.text] == ["fine", "한글 ok"]
    items = list(iter_texts(str(path), max_chars=40))
    assert [i for i in items if isinstance(i, str)] == ["fine", "한글 ok"]
    # in a shard that starts mid-file the line number is counted only when asked for
    late = [r for s in plan_shards([str(path)], 4) for r in iter_records(s, max_chars=40)]
    assert [r.location() for r in late] == [f"{path}:{i + 1}" for i in range(len(BAD_LINES))]
    with pytest.raises(CorpusError, match=rf"bad.jsonl:2: invalid_json"):
        list(iter_documents([str(path)], max_chars=40))
    assert list(iter_documents([str(path)], max_chars=40, skip_bad=True)) == ["fine", "한글 ok"]


def test_expand_inputs_files_dirs_globs_and_errors(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "sub/c.txt", "sub/.hidden.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('{"text": "x"}\n')
    got = expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path / "sub"), str(tmp_path / "a.jsonl")])
    assert got == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), str(tmp_path / "sub/c.txt")]
    with pytest.raises(CorpusError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(CorpusError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        expand_inputs([str(tmp_path / "x.csv")])
    shards = plan_shards([str(tmp_path / "a.jsonl")], 3)  # 14 bytes in 3 byte ranges: one owns the line
    assert len(shards) == 3 and [len(list(iter_records(s))) for s in shards] == [1, 0, 0]
    assert plan_shards([str(tmp_path / "a.jsonl")], 1) == [Shard(str(tmp_path / "a.jsonl"))]


def _jsonl(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()


def _read_cut(path, data: bytes) -> list[str]:
    path.write_bytes(data)
    return list(iter_documents([str(path)], skip_bad=True))


@pytest.mark.parametrize("suffix", [".zst", ".gz"])
def test_a_cut_compressed_file_is_an_error_even_with_skip_bad(tmp_path, english_docs, suffix):
    """A partial download: every cut inside compressed data is found, whatever --skip-bad says."""
    import zstandard

    docs = english_docs[:60]  # 350 KB of text, in two frames (or members) split inside document 40
    compress = zstandard.ZstdCompressor().compress if suffix == ".zst" else gzip.compress
    first, second = compress(_jsonl(docs[:40])[:-7]), compress(_jsonl(docs[:40])[-7:] + _jsonl(docs[40:]))
    path = tmp_path / f"c.jsonl{suffix}"
    assert _read_cut(path, first + second) == docs  # every frame / member is read
    name = "zstd" if suffix == ".zst" else "gzip"
    for cut in (5, 10, len(first) // 2, len(first) - 1, len(first) + 3, len(first) + 12, len(first) + len(second) - 1):
        with pytest.raises(CorpusError, match=rf"c\.jsonl{suffix}: truncated {name} stream.*--skip-bad cannot help"):
            _read_cut(path, (first + second)[:cut])
    # The limit of the format: cut exactly between two frames, the rest is a valid, shorter stream. This
    # one ends mid-line without a newline, so it is found as a JSONL file cut inside a record (--skip-bad or
    # not); at a line end nothing at all would show.
    path.write_bytes(first)
    for skip_bad in (False, True):
        with pytest.raises(CorpusError, match=rf"c\.jsonl{suffix}:40: invalid_json in the file's last line, which "
                           r"has no newline: the file looks cut short .*--skip-bad cannot help"):
            list(iter_documents([str(path)], skip_bad=skip_bad))
    assert _read_cut(path, compress(_jsonl(docs[:39]))) == docs[:39]


def test_a_plain_jsonl_cut_inside_a_record_is_an_error_even_with_skip_bad(tmp_path):
    """The last line has no newline and is not JSON: a cut file, not a bad record. A bad line elsewhere, or a
    valid last line without its newline, is what it always was."""
    whole = _jsonl(["one", "two", "three"])
    for cut in (len(whole) - 3, len(whole) - 9):
        with pytest.raises(CorpusError, match=r"c\.jsonl:3: invalid_json in the file's last line.*cut short"):
            _read_cut(tmp_path / "c.jsonl", whole[:cut])
    assert _read_cut(tmp_path / "c.jsonl", whole[:-1]) == ["one", "two", "three"]  # only the newline is missing
    assert _read_cut(tmp_path / "c.jsonl", b'{"text": "one"}\n{"te\n{"text": "three"}') == ["one", "three"]


def test_a_corrupt_compressed_file_is_an_error_naming_it(tmp_path, english_docs):
    payload = gzip.compress(_jsonl(english_docs[:50]))
    bad_crc = payload[:-8] + bytes([payload[-8] ^ 1]) + payload[-7:]
    for name, data, message in [
        ("a.jsonl.zst", b"not zstd at all\n", "corrupt zstd stream .*Unknown frame descriptor"),
        ("b.jsonl.gz", bad_crc, "corrupt gzip stream .*CRC check failed"),
        ("c.txt.gz", b"plain text, not gzip\n", "corrupt gzip stream .*Not a gzipped file"),
    ]:
        with pytest.raises(CorpusError, match=rf"{name}: {message}.*--skip-bad cannot help"):
            _read_cut(tmp_path / name, data)


def test_sample_is_deterministic_spread_over_the_corpus_and_whole_when_small(tmp_path):
    """The intermediate tokenizer's training text: about sample_bytes, taken from every part of the inputs."""
    docs = [f"문서 {i:05d} " + "가나다 " * (i % 7) for i in range(6000)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    a.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs[:4000]), encoding="utf-8")
    b.write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs[4000:]).encode()))
    budget = 40_000
    sample = list(sample_documents([str(a), str(b)], budget, parts=8))
    assert sample == list(sample_documents([str(a), str(b)], budget, parts=8))
    size = sum(len(d.encode()) for d in sample)
    longest = max(len(d.encode()) for d in docs)
    assert budget <= size <= budget + 9 * longest
    assert set(sample) <= set(docs) and len(set(sample)) == len(sample)
    numbers = sorted(int(d.split()[1]) for d in sample)
    assert numbers[0] == 0 and numbers[-1] >= 4000  # from the first range to the compressed file
    assert max(b - a for a, b in zip(numbers, numbers[1:])) < 1000  # taken all along, not only at the start
    assert list(sample_documents([str(a), str(b)], 10**9)) == docs  # smaller than the sample: read whole
