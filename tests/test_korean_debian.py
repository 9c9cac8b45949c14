"""bench/korean_debian.py's converters on small inline samples of each format (no download)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import korean_debian as kd  # noqa: E402
from compare_runner import round_robin  # noqa: E402


def test_korean_enough_counts_letters_only():
    assert kd.korean_enough("새 탭 열기 (T)") and kd.korean_enough("탭 123 !!")
    assert not kd.korean_enough("새 탭 (Ctrl+T)") and not kd.korean_enough("12345")  # half the letters: Hangul


def test_html_paragraphs_drop_navigation_and_keep_blocks():
    page = """<html><head><title>x</title></head><body>
    <div class="navheader"><table><tr><th>4.4. 자르기</th></tr></table></div>
    <p>자르기 도구는 이미지를
       잘라냅니다.</p><ul><li>첫째 &amp; 둘째</li></ul><script>var x = "스크립트";</script>
    <div class="navfooter">다음</div></body></html>"""
    assert kd.html_paragraphs(page) == ["자르기 도구는 이미지를 잘라냅니다.", "첫째 & 둘째"]


def test_tex_paragraphs_keep_text_drop_markup():
    src = r"""\section{소개}

한글 문서를 \emph{쉽게} 만들 수 있다. % 주석은 버린다
수식 $a+b$ 와 \verb|\foo| 는 빠진다.

\begin{verbatim}
\documentclass{article} 코드
\end{verbatim}
두 번째 문단은 여기서 시작하며 충분히 길다~입니다."""
    paras = kd.tex_paragraphs(src)
    assert paras == ["한글 문서를 쉽게 만들 수 있다. 수식 와 는 빠진다.", "두 번째 문단은 여기서 시작하며 충분히 길다 입니다."]


def test_ftl_strings_values_attributes_variants():
    src = """# comment
tab-close = { $tabTitle } 닫기
    .accesskey = C
-brand-name = Firefox
downloads-count =
    { $count ->
        [one] 파일 하나
       *[other] 파일 { $count }개
    }
multi = 첫 줄
    둘째 줄
"""
    assert kd.ftl_strings(src) == ["닫기", "C", "Firefox", "파일 하나", "파일 개", "첫 줄 둘째 줄"]


def test_properties_strings():
    src = "# c\nkey1 = 새 창 %S 열기\nkey2=\\uD0ED\nnoequals\n"
    assert kd.properties_strings(src) == ["새 창 열기", "탭"]


def _mo(pairs: list[tuple[str, str]]) -> bytes:
    """A little-endian GNU .mo catalogue of (msgid, msgstr) pairs."""
    ids = [k.encode() for k, _ in pairs]
    strs = [v.encode() for _, v in pairs]
    n = len(pairs)
    header = 28
    off_ids, off_strs = header, header + 8 * n
    data_start = header + 16 * n
    blob, id_table, str_table = b"", [], []
    for s in ids:
        id_table.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    for s in strs:
        str_table.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, n, off_ids, off_strs, 0, 0)
    out += b"".join(struct.pack("<2I", *e) for e in id_table) + b"".join(struct.pack("<2I", *e) for e in str_table)
    return out + blob


def test_mo_strings_skip_header_split_plurals_and_drop_formats():
    data = _mo([("", "Project-Id-Version: x\nContent-Type: text/plain; charset=UTF-8\n"),
                ("Open", "열기(_O)"), ("%1 file", "파일 %1개\x00파일들 %1개")])
    assert kd.mo_strings(data) == ["열기(_O)", "파일 %1개", "파일들 %1개"]


def test_xcd_strings():
    src = '<prop><value xml:lang="ko">&#xD30C;&#xC77C; ~&#xC5F4;&#xAE30;</value></prop>'
    assert kd.xcd_strings(src) == ["파일 열기"]


def test_fresh_dedups_across_calls_and_chunk_groups_strings():
    seen: set[str] = set()
    assert list(kd._fresh(["가나", "abc", "가나", "다라"], seen)) == ["가나", "다라"]
    assert list(kd._fresh(["다라", "마바"], seen)) == ["마바"]
    assert list(kd.chunk(["가" * 10, "나" * 10, "다" * 3], size=15)) == ["가" * 10 + "\n" + "나" * 10, "다" * 3]


def test_round_robin_takes_turns_and_stops_at_the_budget():
    docs = round_robin([["a1", "a2", "a3"], ["b1"]], chars=7)
    assert docs == ["a1", "b1", "a2", "a3"]
    assert round_robin([["x" * 50 + ". " + "y" * 50]], chars=10, max_doc_chars=60) == ["x" * 50 + "."]
