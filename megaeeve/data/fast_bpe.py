"""An opt-in faster, exact encoder for GPT-2-style byte-level BPE: tiktoken over the tokenizer's own vocabulary.

tiktoken ranks a merge by the id of the token it makes; Hugging Face BPE by the merge's position. The two
agree when merge i makes a token whose id grows with i, every longer token is made by its own merge, and
nothing else (normalizer, extra pre-tokenizers, non-special added tokens) changes the text on the way.
`tiktoken_encoding` checks exactly that and refuses any other tokenizer; tests/test_preprocess.py
compares the ids on the Korean and English corpora.
"""

from __future__ import annotations

import json
from typing import Callable

from tokenizers import Tokenizer

# The pre-tokenizer regex of tokenizers' ByteLevel(use_regex=True), i.e. GPT-2's.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class NotEligible(ValueError):
    """The tokenizer is not one that tiktoken encodes identically; the message says why."""


def byte_symbols() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte value -> the byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols[chr(256 + extra)] = b
            extra += 1
    return symbols


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise NotEligible(f"tiktoken cannot encode this tokenizer identically: {reason}")


def tiktoken_encoding(tok: Tokenizer):
    """A `tiktoken.Encoding` giving the same ids as `tok.encode(text, add_special_tokens=False)`."""
    import tiktoken

    cfg = json.loads(tok.to_str())
    model = cfg["model"]
    _check(cfg.get("normalizer") is None, "it has a normalizer")
    pre = cfg.get("pre_tokenizer") or {}
    _check(pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"),
           "its pre-tokenizer is not ByteLevel(add_prefix_space=False, use_regex=True)")
    _check(model.get("type") == "BPE", "its model is not BPE")
    _check(not model.get("dropout") and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
           and not model.get("byte_fallback") and not model.get("ignore_merges"), "its BPE has non-GPT-2 options")
    post = cfg.get("post_processor")
    _check(post is None or post.get("type") == "ByteLevel", "its post-processor may add tokens")
    vocab: dict[str, int] = model["vocab"]
    symbols = byte_symbols()
    _check(all(ch in vocab for ch in symbols), "not every byte is a token")
    last = -1
    to_latin1 = str.maketrans({ch: chr(b) for ch, b in symbols.items()})  # symbol string -> its bytes, fast
    ranks = {bytes([b]): vocab[ch] for ch, b in symbols.items()}
    pairs = [merge.split(" ") if isinstance(merge, str) else merge for merge in model["merges"]]
    _check(set("".join(a + b for a, b in pairs)) <= symbols.keys(), "a merge has characters outside the byte alphabet")
    for a, b in pairs:
        made = vocab.get(a + b)
        _check(made is not None and made > last, f"merge {a!r} + {b!r} does not make a token with a growing id")
        last = made
        ranks[(a + b).translate(to_latin1).encode("latin-1")] = made
    specials = {}
    for added in cfg.get("added_tokens", []):
        _check(added["special"] and not (added["lstrip"] or added["rstrip"] or added["single_word"] or added["normalized"]),
               f"added token {added['content']!r} is not a plain special token")
        specials[added["content"]] = added["id"]
    # Every token is a byte, made by exactly one merge, or a special token: nothing tiktoken could reach otherwise.
    _check(len(ranks) == 256 + len(model["merges"]), "two merges make the same token")
    made_by = set(ranks.values()) | set(specials.values())
    _check(all(i in made_by for i in vocab.values()), "some tokens are not made by a merge")
    return tiktoken.Encoding("megaeeve-bytelevel-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)


def tiktoken_batch_encoder(tok: Tokenizer, workers: int) -> Callable[[list[str]], list[list[int]]]:
    """texts -> ids per text, like `tok.encode_batch_fast(texts, add_special_tokens=False)` (special tokens
    in the text are matched, as tokenizers does)."""
    encoding = tiktoken_encoding(tok)
    return lambda texts: encoding.encode_batch(texts, num_threads=workers, allowed_special="all")
