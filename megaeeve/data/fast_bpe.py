"""An opt-in faster, exact encoder for GPT-2-style byte-level BPE: tiktoken over the tokenizer's own vocabulary.

Hugging Face BPE merges, in a word, the adjacent pair (x, y) of lowest merge rank that is a merge; tiktoken
merges the adjacent pair whose concatenation x + y is a token of lowest id, whichever two tokens make it, and
returns a word that is a token whole. They differ on merges a+b, b+c, a+bc and the word "abc": Hugging Face
stops at [ab, c] (ab + c is not a merge), tiktoken goes on to [abc].

Why the checks below prove equal ids. Each token is made by exactly one merge, ids grow with merge rank, and
**every token's own text tokenizes to that token** under Hugging Face BPE. Take any word and any moment of
Hugging Face's run on it, and two adjacent pieces x, y whose concatenation is a token t. No merge has ever
crossed the outer edges of x + y, so the pieces inside x + y went through exactly the merges, in the same
order, that a run on the text of t alone goes through: that run passes [x, y]. It must still reach [t], and
from [x, y] only the merge (x, y) does: so (x, y) is t's merge. Hence in every state both libraries see the
same candidate pairs, ranked alike (id order = merge order), take the leftmost of the lowest, and stop
together; and a word that is a token whole is that token for both. Nothing else (normalizer, extra
pre-tokenizers, non-special added tokens) may change the text on the way. `tiktoken_encoding` checks all
this and refuses any other tokenizer; tests/test_preprocess.py checks the counterexample and the ids of
GPT-2 and of a GPT-2 expanded with Korean tokens.
"""

from __future__ import annotations

import json
from typing import Callable

from tokenizers import Tokenizer

from megaeeve.errors import NotEligible

# The pre-tokenizer regex of tokenizers' ByteLevel(use_regex=True), i.e. GPT-2's.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


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


def _check_tokens_reach_themselves(tok: Tokenizer, vocab: dict[str, int], specials: dict[str, int]) -> None:
    """Every token's text tokenizes to the token itself (the premise of the proof above; 0.2 s for GPT-2)."""
    for token in vocab:
        if token in specials:
            continue
        pieces = [t.value for t in tok.model.tokenize(token)]
        _check(pieces == [token], f"token {token!r} tokenizes to {pieces} under its own merges, where tiktoken "
                                  "would emit it whole")


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
    _check_tokens_reach_themselves(tok, vocab, specials)
    return tiktoken.Encoding("megaeeve-bytelevel-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)


def tiktoken_batch_encoder(tok: Tokenizer, workers: int) -> Callable[[list[str]], list[list[int]]]:
    """texts -> ids per text, like `tok.encode_batch_fast(texts, add_special_tokens=False)` (special tokens
    in the text are matched, as tokenizers does)."""
    encoding = tiktoken_encoding(tok)
    return lambda texts: encoding.encode_batch(texts, num_threads=workers, allowed_special="all")
