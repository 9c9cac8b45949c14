"""Korean text from Debian packages: help prose, TeX documents and UI strings, as JSONL documents.

    python bench/korean_debian.py --output DIR [--debs DIR]

Downloads (`apt-get download`, no install, no root needed beyond a fresh `apt-get update`) and unpacks
(`dpkg-deb -x`) five packages, and turns each into plain-text documents:

| package | what | documents |
|---|---|---|
| gimp-help-ko | GIMP's user manual, DocBook HTML (much of it still English) | one per page: its Korean paragraphs |
| texlive-lang-korean | the Korean "lshort" and the ko.TeX / oblivoir / cjk-ko manuals (TeX) | one per paragraph |
| firefox-esr-l10n-ko | Firefox's Korean UI strings (Fluent .ftl, .properties) | one per file, chunked |
| thunderbird-l10n-ko | Thunderbird's Korean UI strings (Fluent .ftl, .properties) | one per file, chunked |
| libreoffice-l10n-ko | LibreOffice's Korean UI strings (gettext .mo, registry .xcd) | one per file, chunked |

A paragraph or string is kept when at least half of its letters are Hangul; exact duplicates are kept
once across all packages (Firefox and Thunderbird share much of the toolkit's strings), the first
occurrence in the order above winning. Writes DIR/SOURCE.jsonl (`{"text": ...}`) per package and
DIR/manifest.json (package versions, documents and characters per source). Deterministic: the same
package versions give the same files.
"""

from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

PACKAGES = ("gimp-help-ko", "texlive-lang-korean", "firefox-esr-l10n-ko", "thunderbird-l10n-ko",
            "libreoffice-l10n-ko")
CHUNK_CHARS = 1500  # UI strings of one file are grouped into documents of about this many characters


def is_hangul(ch: str) -> bool:
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


def korean_enough(text: str, share: float = 0.5) -> bool:
    """At least `share` of the letters are Hangul (and there is at least one)."""
    letters = [c for c in text if c.isalpha()]
    hangul = sum(map(is_hangul, letters))
    return hangul > 0 and hangul >= share * len(letters)


def clean(text: str) -> str:
    return re.sub(r"[ \t\u00a0]+", " ", text).strip()


# -- HTML (gimp-help) ----------------------------------------------------------------------------------
_BLOCK = r"p|li|dt|dd|td|th|h[1-6]|title|pre|caption|blockquote|div"


def html_paragraphs(page: str) -> list[str]:
    """Text of the block elements of a DocBook HTML page, navigation and scripts dropped."""
    page = re.sub(r'<div class="nav(header|footer)">.*?</div>', " ", page, flags=re.S)
    page = re.sub(r"<(script|style|head)\b.*?</\1>", " ", page, flags=re.S | re.I)
    page = re.sub(r"<!--.*?-->", " ", page, flags=re.S)
    page = re.sub(rf"</?(?:{_BLOCK})\b[^>]*>|<br\s*/?>", "\n\n", page, flags=re.I)
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    paras = (clean(" ".join(block.split())) for block in re.split(r"\n\s*\n", text))
    return [p for p in paras if p]


def gimp_documents(root: Path) -> Iterator[str]:
    for page in sorted(root.rglob("*.html")):
        paras = [p for p in html_paragraphs(page.read_text(encoding="utf-8", errors="replace")) if korean_enough(p)]
        if paras:
            yield "\n".join(paras)


# -- TeX (texlive-lang-korean) ---------------------------------------------------------------------------
_VERBATIM = r"verbatim\*?|lstlisting|Verbatim|alltt|lstset|tabular\*?|tabularx|array|equation\*?|align\*?|displaymath|eqnarray\*?|code|example|lined|boxedverbatim"


def tex_paragraphs(src: str) -> list[str]:
    """Rough TeX to text: comments, verbatim-like environments, math and command names dropped, the
    arguments of commands kept; paragraphs are separated by blank lines."""
    src = re.sub(r"(?<!\\)%.*", "", src)
    src = re.sub(rf"\\begin\{{({_VERBATIM})\}}.*?\\end\{{\1\}}", "\n\n", src, flags=re.S)
    src = re.sub(r"\\verb\*?(.).*?\1", " ", src)
    src = re.sub(r"\$\$.*?\$\$|\\\[.*?\\\]|(?<!\\)\$.*?(?<!\\)\$", " ", src, flags=re.S)
    src = re.sub(r"\\(begin|end)\{[^}]*\}(\[[^\]]*\])?", "\n\n", src)
    src = re.sub(r"\\(part|chapter|section|subsection|subsubsection|paragraph|item)\b\*?", "\n\n", src)
    src = re.sub(r"\\(label|ref|pageref|cite|index|input|include|usepackage|documentclass|url|href|"
                 r"includegraphics|hspace|vspace|setlength|newcommand|renewcommand|def|let)\*?"
                 r"(\[[^\]]*\])?\{[^}]*\}", " ", src)
    src = re.sub(r"\\[A-Za-z@]+\*?(\[[^\]]*\])?", " ", src)  # remaining command names; arguments stay
    src = re.sub(r"\\(.)", r"\1", src)  # \% \& \{ ...
    src = src.replace("~", " ").replace("{", "").replace("}", "").replace("``", "“").replace("''", "”")
    paras = (clean(" ".join(block.split())) for block in re.split(r"\n\s*\n", src))
    return [p for p in paras if len(p) >= 20]


def _tex_sources(root: Path) -> Iterator[tuple[str, str]]:
    """(name, TeX source) of the Korean documents: plain and gzipped .tex files and the lshort source."""
    for path in sorted(root.rglob("*")):
        name = path.name
        if name.endswith(".tex"):
            yield str(path), path.read_text(encoding="utf-8", errors="replace")
        elif name.endswith(".tex.gz"):
            yield str(path), gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        elif name.endswith(".tar.gz") and "lshort" in name:
            with tarfile.open(path) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base.endswith(".tex") and not base.startswith("._"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        yield f"{path}:{member.name}", data.decode("utf-8", errors="replace")


def tex_documents(root: Path) -> Iterator[str]:
    for _, src in _tex_sources(root):
        yield from (p for p in tex_paragraphs(src) if korean_enough(p))


# -- UI strings (Fluent, .properties, gettext .mo, LibreOffice .xcd) -------------------------------------
def ftl_strings(src: str) -> list[str]:
    """Message values and attribute values of a Fluent file; placeables dropped, select variants kept."""
    out, current = [], []

    def flush() -> None:
        if current:
            out.append(" ".join(current))
            current.clear()

    for line in src.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            flush()
            continue
        m = re.match(r"^-?[A-Za-z][\w-]*\s*=\s?(.*)$", line)  # a message or term
        a = re.match(r"^\s+\.[\w-]+\s*=\s?(.*)$", line)  # an attribute
        v = re.match(r"^\s+\*?\[[^\]]+\]\s*(.*)$", line)  # a select variant
        if m or a or v:
            flush()
            current.append((m or a or v).group(1))  # type: ignore[union-attr]
        elif line[:1].isspace():
            current.append(line.strip())
    flush()
    strings = []
    for s in out:
        s = re.sub(r"\{[^{}]*\}", " ", s)  # placeables: { $var }, { -term }, { NUMBER(...) }
        s = re.sub(r"\{\s*\$?[\w-]+(\([^)]*\))?\s*->", " ", s)  # the head of a select expression
        s = s.replace("{", " ").replace("}", " ")
        strings.append(clean(html.unescape(re.sub(r"<[^>]+>", "", s))))
    return [s for s in strings if s]


def properties_strings(src: str) -> list[str]:
    strings = []
    for line in src.splitlines():
        if line.lstrip().startswith(("#", "!")) or "=" not in line:
            continue
        value = line.split("=", 1)[1]
        value = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), value)
        value = re.sub(r"%(\d\$)?[sSdu]|#\d", " ", value).replace("\\n", " ")
        strings.append(clean(value))
    return [s for s in strings if s]


def mo_strings(data: bytes) -> list[str]:
    """msgstr values of a GNU gettext .mo catalogue (plural forms split), the header skipped."""
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    _, count, _, table = struct.unpack(order + "4I", data[4:20])
    strings = []
    for i in range(count):
        length, offset = struct.unpack(order + "2I", data[table + 8 * i: table + 8 * i + 8])
        value = data[offset:offset + length].decode("utf-8", errors="replace")
        if i == 0 and value.startswith("Project-Id-Version") or "Content-Type:" in value:
            continue
        for form in value.split("\x00"):
            form = re.sub(r"%(\d\$)?[sSdu]|\$\([A-Z_]+\)|%[A-Z]+%?|~", " ", form)
            strings.append(clean(form.replace("\n", " ")))
    return [s for s in strings if s]


def xcd_strings(src: str) -> list[str]:
    values = re.findall(r'<value xml:lang="ko">(.*?)</value>', src, flags=re.S)
    return [s for s in (clean(html.unescape(v).replace("~", "")) for v in values) if s]


def chunk(strings: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Consecutive strings joined by newlines into documents of about `size` characters."""
    part: list[str] = []
    n = 0
    for s in strings:
        part.append(s)
        n += len(s) + 1
        if n >= size:
            yield "\n".join(part)
            part, n = [], 0
    if part:
        yield "\n".join(part)


def _xpi_files(root: Path) -> Iterator[tuple[str, str]]:
    for xpi in sorted(root.rglob("*.xpi")):
        with zipfile.ZipFile(xpi) as z:
            for name in sorted(z.namelist()):
                if name.endswith((".ftl", ".properties")):
                    yield name, z.read(name).decode("utf-8", errors="replace")


def mozilla_documents(root: Path, seen: set[str]) -> Iterator[str]:
    for name, src in _xpi_files(root):
        strings = ftl_strings(src) if name.endswith(".ftl") else properties_strings(src)
        yield from chunk(_fresh(strings, seen))


def libreoffice_documents(root: Path, seen: set[str]) -> Iterator[str]:
    for path in sorted(root.rglob("*.mo")):
        yield from chunk(_fresh(mo_strings(path.read_bytes()), seen))
    for path in sorted(root.rglob("*.xcd")):
        yield from chunk(_fresh(xcd_strings(path.read_text(encoding="utf-8", errors="replace")), seen))


def _fresh(items: Iterable[str], seen: set[str]) -> Iterator[str]:
    """Korean items not seen before (exact match), in order; marks them seen."""
    for s in items:
        if s not in seen and korean_enough(s):
            seen.add(s)
            yield s


# -- download, unpack, write -----------------------------------------------------------------------------
def download(packages: Iterable[str], debs: Path) -> dict[str, Path]:
    """The .deb of each package in `debs`, fetched with `apt-get download` when absent."""
    debs.mkdir(parents=True, exist_ok=True)
    found = {p: sorted(debs.glob(f"{p}_*.deb")) for p in packages}
    missing = [p for p, files in found.items() if not files]
    if missing:
        proc = subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(missing)} failed (run `apt-get update` first?):\n"
                               f"{proc.stderr.strip()}")
        found = {p: sorted(debs.glob(f"{p}_*.deb")) for p in packages}
    return {p: files[-1] for p, files in found.items()}


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def build(output: Path, debs: Path) -> dict:
    """Download, unpack and convert every package; write output/SOURCE.jsonl and output/manifest.json."""
    from megaeeve.atomic import atomic_dir, write_json

    files = download(PACKAGES, debs)
    seen: set[str] = set()
    converters: dict[str, Callable[[Path], Iterator[str]]] = {
        "gimp-help-ko": lambda root: _fresh(gimp_documents(root), seen),
        "texlive-lang-korean": lambda root: _fresh(tex_documents(root), seen),
        "firefox-esr-l10n-ko": lambda root: mozilla_documents(root, seen),
        "thunderbird-l10n-ko": lambda root: mozilla_documents(root, seen),
        "libreoffice-l10n-ko": lambda root: libreoffice_documents(root, seen),
    }
    manifest: dict = {"sources": {}}
    with atomic_dir(output) as tmp, tempfile.TemporaryDirectory() as unpack:
        for package in PACKAGES:
            root = Path(unpack) / package
            subprocess.run(["dpkg-deb", "-x", str(files[package]), str(root)], check=True)
            docs = list(converters[package](root))
            with open(tmp / f"{package}.jsonl", "w", encoding="utf-8") as f:
                for doc in docs:
                    f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            manifest["sources"][package] = {
                "deb": files[package].name, "version": deb_version(files[package]), "documents": len(docs),
                "characters": sum(map(len, docs)),
                "hangul_characters": sum(is_hangul(c) for d in docs for c in d),
            }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_documents(path: Path) -> list[str]:
    with io.open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, type=Path, help="directory to create")
    p.add_argument("--debs", type=Path, help="where the .deb files are (or go); default OUTPUT.debs")
    args = p.parse_args(argv)
    manifest = build(args.output, args.debs or args.output.with_name(args.output.name + ".debs"))
    for name, s in manifest["sources"].items():
        print(f"{name:22s} {s['version']:28s} {s['documents']:>6,} documents {s['characters']:>10,} characters "
              f"({s['hangul_characters']:,} Hangul)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
