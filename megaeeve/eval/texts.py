"""Evaluation texts: the documents of one corpus file, read exactly as preprocessing reads them."""

from __future__ import annotations

import itertools
from pathlib import Path

from megaeeve.corpus import expand_inputs, iter_documents
from megaeeve.errors import CorpusError


def read_texts(path: str | Path, max_docs: int | None = None, max_chars: int | None = None) -> list[str]:
    """Documents of `path` in file order (JSONL `text` key, .txt one a line, Parquet/Arrow), the first `max_docs`,
    and of those the first `max_chars` characters (the document that crosses the limit is cut there): an eval
    budget that holds whatever the corpus, since scoring time grows with the text.

    A bad record, a missing file or a file without documents is a CorpusError naming the file.
    """
    docs = list(itertools.islice(iter_documents(expand_inputs([str(path)])), max_docs))
    if not docs:
        raise CorpusError(f"{path}: no documents")
    if max_chars is None:
        return docs
    kept, left = [], max_chars
    for doc in docs:
        if left <= 0:
            break
        kept.append(doc[:left])
        left -= len(kept[-1])
    return kept
