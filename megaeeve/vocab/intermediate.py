"""Step 1-2: train an intermediate tokenizer of the base's family on the target corpus, take its new
target-language tokens.

The intermediate tokenizer reuses the base's normalizer and pre-tokenizer (and BPE settings such as
byte fallback), so its pieces are spelled exactly like the base's and can be merged into it.
"""

from __future__ import annotations

import json
from typing import Iterable

from tokenizers import Tokenizer, pre_tokenizers, trainers

from megaeeve.vocab.family import Family
from megaeeve.vocab.scripts import Script


def train_intermediate(
    base: Tokenizer, family: Family, *, docs: Iterable[str], vocab_size: int, show_progress: bool = False
) -> Tokenizer:
    """A BPE tokenizer of `vocab_size` trained on `docs` with the base's text pipeline."""
    spec = json.loads(base.to_str())
    model = dict(spec["model"], vocab={}, merges=[], dropout=None)
    blank = {
        "version": spec.get("version", "1.0"),
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": spec.get("normalizer"),
        "pre_tokenizer": spec.get("pre_tokenizer"),
        "post_processor": None,
        "decoder": spec.get("decoder"),
        "model": model,
    }
    tok = Tokenizer.from_str(json.dumps(blank))
    specials = [model["unk_token"]] if model.get("unk_token") else []
    alphabet = pre_tokenizers.ByteLevel.alphabet() if family.name == "byte_level" else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=show_progress,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def target_candidates(intermediate: Tokenizer, base: Tokenizer, family: Family, script: Script) -> list[str]:
    """Pieces of `intermediate` that are whole target-language text and not in the base vocabulary, in the
    order it learned them (its ids: the alphabet, then one token per merge, most frequent pair first)."""
    base_vocab = base.get_vocab(with_added_tokens=True)
    learned = intermediate.get_vocab(with_added_tokens=False)
    found = []
    for piece in learned:
        if piece in base_vocab:
            continue
        text = family.piece_text(piece)
        if text is not None and script.is_target_text(text):
            found.append(piece)
    return sorted(found, key=learned.__getitem__)
