"""The base tokenizer's family: how its BPE pieces map to bytes, and which merges are safe to add.

Two families are supported, both BPE:
- byte-level (GPT-2, phi-2, SmolLM2): pieces are strings of byte characters (GPT-2's byte-to-unicode
  table); every byte is a base piece, so a new character is reached by merges of byte pieces.
- character-level with byte fallback (Llama / SentencePiece-style, Metaspace "▁" for spaces): pieces
  are characters; a character missing from the vocabulary falls back to <0xXX> byte tokens, so a new
  character is reached by adding it to the vocabulary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from megaeeve.errors import UnsupportedTokenizer
from megaeeve.vocab.scripts import Script

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the one ByteLevel pre-tokenizers use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _components(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A normalizer / pre-tokenizer and, for Sequences, its parts (flattened)."""
    if not obj:
        return []
    parts = obj.get("pretokenizers") or obj.get("normalizers")
    if obj.get("type") == "Sequence" and parts is not None:
        return [c for p in parts for c in _components(p)]
    return [obj]


@dataclass(frozen=True)
class Family:
    """How to read pieces of one base tokenizer: `byte_level`, or characters with `space` for ' '."""

    name: str  # "byte_level" or "char_level"
    space: str = "▁"

    def piece_bytes(self, piece: str) -> bytes:
        """The UTF-8 bytes a piece stands for."""
        if self.name == "byte_level":
            return bytes(CHAR_TO_BYTE[c] for c in piece)
        m = _BYTE_FALLBACK.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace(self.space, " ").encode("utf-8")

    def piece_text(self, piece: str) -> str | None:
        """The text of a piece, or None if it is not whole characters (a partial UTF-8 sequence)."""
        try:
            return self.piece_bytes(piece).decode("utf-8")
        except (UnicodeDecodeError, KeyError):
            return None

    def text_piece(self, text: str) -> str:
        """The piece string a word's text becomes (inverse of `piece_text`)."""
        if self.name == "byte_level":
            return "".join(BYTE_TO_CHAR[b] for b in text.encode("utf-8"))
        return text.replace(" ", self.space)

    def merge_is_safe(self, piece: str, script: Script) -> bool:
        """True if a merge producing `piece` can only fire on text containing a script character.

        That is what keeps text without target-language characters tokenized exactly as by the base:
        the piece holds a whole script character, or ends in a partial character all of whose
        completions are script characters (e.g. the first two bytes of a Hangul syllable).
        """
        data = self.piece_bytes(piece)
        i = 0
        while i < len(data) and 0x80 <= data[i] < 0xC0:  # starts mid-character: skip the tail
            i += 1
        data = data[i:]
        j = len(data)
        while j > 0 and 0x80 <= data[j - 1] < 0xC0:
            j -= 1
        if j > 0 and data[j - 1] >= 0xC0:  # a lead byte: data[j-1:] may be a partial character
            need = 2 if data[j - 1] < 0xE0 else 3 if data[j - 1] < 0xF0 else 4
            if len(data) - (j - 1) < need:
                partial, data = data[j - 1 :], data[: j - 1]
            else:
                partial = b""
        else:
            partial = b""
        try:
            whole = data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return any(script.contains(c) for c in whole) or (bool(partial) and script.owns_all_completions(partial))


def detect_family(tok: Tokenizer) -> Family:
    """The family of `tok`, or UnsupportedTokenizer naming what is not supported."""
    spec = json.loads(tok.to_str())
    model = spec["model"]
    kind = model.get("type")
    if kind != "BPE":
        raise UnsupportedTokenizer(
            f"unsupported base tokenizer model {kind!r}: vocabulary expansion merges new entries into a BPE"
            " model (byte-level like GPT-2, or byte-fallback like Llama); WordPiece/Unigram/WordLevel are not"
            " supported"
        )
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UnsupportedTokenizer(f"unsupported base BPE setting {key}={model[key]!r}")
    parts = _components(spec.get("pre_tokenizer")) + _components(spec.get("normalizer"))
    if any(p.get("type") == "ByteLevel" for p in parts):
        return Family("byte_level")
    for p in parts:
        if p.get("type") == "Metaspace":
            return Family("char_level", p.get("replacement", "▁"))
        if p.get("type") == "Replace" and p.get("pattern", {}).get("String") == " ":
            return Family("char_level", p.get("content", "▁"))
    if model.get("byte_fallback"):
        return Family("char_level")
    raise UnsupportedTokenizer(
        "unsupported base BPE tokenizer: neither byte-level (ByteLevel pre-tokenizer) nor byte-fallback"
        " (Llama-style); its unknown characters could not be represented"
    )
