"""Shared fixtures: real tokenizers and real text from registry packages (see megaeeve/assets.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from megaeeve import assets

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory) -> Path:
    """GPT-2 byte-level BPE as a Hugging Face tokenizer directory."""
    return assets.save_hf_tokenizer(assets.gpt2_tokenizer(), tmp_path_factory.mktemp("gpt2-tokenizer"))


@pytest.fixture(scope="session")
def phi2_tokenizer_dir(tmp_path_factory) -> Path:
    """phi-2's tokenizer (GPT-2 + 38 whitespace tokens) as a Hugging Face tokenizer directory."""
    return assets.save_hf_tokenizer(assets.phi2_tokenizer(), tmp_path_factory.mktemp("phi2-tokenizer"))


@pytest.fixture(scope="session")
def korean_split() -> tuple[list[str], list[str]]:
    """(train, held-out) Korean documents from konlpy's corpora."""
    return assets.split_held_out(assets.korean_documents())


@pytest.fixture(scope="session")
def english_docs() -> list[str]:
    return assets.english_documents()


@pytest.fixture(scope="session")
def korean_jsonl(tmp_path_factory, korean_split) -> Path:
    return assets.write_jsonl(korean_split[0], tmp_path_factory.mktemp("corpus") / "ko.jsonl")


@pytest.fixture(scope="session")
def english_jsonl(tmp_path_factory, english_docs) -> Path:
    return assets.write_jsonl(english_docs, tmp_path_factory.mktemp("corpus") / "en.jsonl")
