"""Load tokenizers offline from a tokenizer.json file, a Hugging Face tokenizer directory or a gguf file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tokenizers import Tokenizer

from megaeeve.errors import TokenizerLoadError


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Return the fast `tokenizers.Tokenizer` behind `path` (tokenizer.json, an HF directory or a gguf file).

    A directory without tokenizer.json (e.g. vocab.json + merges.txt only) and a gguf model file are
    converted through transformers, still offline.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer
        except Exception as e:
            raise TokenizerLoadError(f"{path}: transformers cannot read a tokenizer from this gguf file ({e})") from e
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerLoadError(f"{path}: not a tokenizer.json file ({e})") from e
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return load_tokenizer(path / "tokenizer.json")
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            raise TokenizerLoadError(f"{path}: no tokenizer.json and transformers cannot load it ({e})") from e
        backend = getattr(hf, "backend_tokenizer", None) or getattr(hf, "_tokenizer", None)
        if backend is None:
            raise TokenizerLoadError(f"{path}: tokenizer has no fast (tokenizers) backend")
        return backend
    raise TokenizerLoadError(f"{path}: no such tokenizer file or directory")


def load_hf_tokenizer(path: str | os.PathLike):
    """The transformers tokenizer of an HF directory or a gguf file, offline: it knows the special tokens
    (bos, eos) and decodes, which evaluation and generation need beyond the fast `Tokenizer`."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise TokenizerLoadError(f"{path}: no such tokenizer file or directory")
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds; the first line says which
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TokenizerLoadError(f"{path}: transformers cannot load a tokenizer from it ({first})") from e


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: names a tokenizer's identity in manifests."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
