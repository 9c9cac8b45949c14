"""Shared fixtures: real tokenizers and real text from registry packages (see megaeeve/assets.py)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """`tmp_path_factory.mktemp` for a module's fixtures; what it made is removed when the module's tests are done,
    unless one of them failed (then it stays for a look, as a failed test's tmp_path does). Why: kept to the end of
    the session, the suite's models and checkpoints reached 17 GB and once filled CI's disk."""
    failed, made = request.session.testsfailed, []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


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
