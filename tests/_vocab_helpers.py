"""Helpers for the vocabulary-expansion tests: a Llama-style base, probe texts, non-target texts."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from megaeeve.vocab.family import Family
from megaeeve.vocab.scripts import Script

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def llama_style_tokenizer(texts: list[str], vocab_size: int = 1200) -> Tokenizer:
    """A small SentencePiece/Llama-style BPE: Metaspace "▁", byte fallback (<0xXX> model entries), <s> bos."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"] + BYTE_TOKENS, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(tok.to_str())
    # Like Llama: byte tokens are model entries, not added tokens matched in the raw text.
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] not in BYTE_TOKENS]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def python_sources() -> list[str]:
    """Real source code: a few standard-library modules."""
    import argparse
    import json as json_module
    import textwrap

    return [inspect.getsource(m) for m in (argparse, json_module, textwrap)]


def non_target_texts(script: Script, per_text: int = 3000) -> list[str]:
    """Every assigned non-script BMP character (plus some emoji), in space-separated five-char words.

    Scripts sharing UTF-8 lead bytes with Hangul (Yi, Lisu, Vai, CJK, ...) are in here: a merge of a
    partial Hangul prefix that also fired on them would show up as a changed id.
    """
    import unicodedata

    chars = [
        chr(cp)
        for cp in list(range(0xA0, 0xD800)) + list(range(0xF900, 0xFFFE)) + list(range(0x1F300, 0x1F650))
        if not script.contains(chr(cp)) and unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co", "Cc")
    ]
    words = [" ".join("".join(chars[i + j : i + j + 5]) for j in range(0, 60, 5)) for i in range(0, len(chars), 60)]
    return ["\n".join(words[i : i + per_text // 60]) for i in range(0, len(words), per_text // 60)]


def probe_texts(family: Family, piece: str) -> list[str]:
    """Texts on which `piece` should be emitted: its own text (alone and after a '.'), or for a partial
    character every completion of it."""
    text = family.piece_text(piece)
    if text is not None:
        return [text, "." + text]
    data = family.piece_bytes(piece)
    lead = 0
    while data[lead] & 0xC0 == 0x80:  # starts inside a character: complete it on the left
        lead += 1
    cut = len(data)
    while cut > lead and data[cut - 1] & 0xC0 == 0x80:
        cut -= 1
    if cut > lead and data[cut - 1] >= 0xC0 and len(data) - cut + 1 < _utf8_length(data[cut - 1]):
        cut -= 1  # data[cut:] is a partial character: complete it on the right
    else:
        cut = len(data)
    lefts = [c.encode() for c in map(chr, range(0xAC00, 0xD7A4)) if c.encode().endswith(data[:lead])] if lead else [b""]
    rights = [b""]
    if cut < len(data):
        partial = data[cut:]
        missing = _utf8_length(partial[0]) - len(partial)
        rights = [
            bytes(0x80 | ((tail >> (6 * i)) & 0x3F) for i in reversed(range(missing))) for tail in range(64**missing)
        ]
    probes = []
    for left in lefts[:64]:
        for right in rights:
            try:
                probes.append((left[: len(left) - lead] + data + right).decode("utf-8"))
            except UnicodeDecodeError:
                continue
    return probes + ["." + p for p in probes]


def _utf8_length(lead: int) -> int:
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
