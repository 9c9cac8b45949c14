"""Step 3: the target tokenizer = the base + new pieces as real BPE entries (vocabulary + merges).

New pieces get the ids right after the base's last id, contiguous. Each new piece is reached by new
merges appended after all base merges. Why that order is safe: BPE applies the lowest-ranked merge
first, so on any word all base merges run to completion before a new merge fires, and a new merge's
result (a new piece) never occurs in a base merge. A word's segmentation is therefore the base
segmentation followed by new merges. Every new merge is `Family.merge_is_safe`: it can only fire on
text holding a target-language character, so any other text keeps the base segmentation exactly.

A piece whose base segmentation has more than two parts needs intermediate pieces (e.g. the first two
bytes of a Hangul syllable, or the syllable itself); those are added as *bridge* pieces, marked as such
in the report.

Pieces are built in the order given: the intermediate tokenizer's merge order (most frequent first; its
characters come before the words made of them). Each piece's merges rank after those of the pieces before
it, so where two pieces overlap in a word (" 대한" and "한민" in " 대한민국"), the one the intermediate
tokenizer learned first wins, as it would in that tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from tokenizers import Tokenizer

from megaeeve.errors import ExpansionError
from megaeeve.vocab.family import Family
from megaeeve.vocab.scripts import Script


@dataclass(frozen=True)
class NewPiece:
    id: int
    piece: str  # as spelled in the BPE vocabulary
    text: str | None  # None for a bridge that is a partial character
    kind: str  # "selected" (frequency-refined) or "bridge" (needed to reach a selected piece)
    serves: tuple[str, ...] = ()  # selected pieces whose tokenization passes through this one


@dataclass
class TargetTokenizer:
    tokenizer: Tokenizer
    base_vocab_size: int
    new: list[NewPiece]
    unreachable: list[str] = field(default_factory=list)  # selected pieces no safe merge chain reaches

    def json(self) -> str:
        return self.tokenizer.to_str()


def base_size(base: Tokenizer) -> int:
    """Number of base ids (model vocabulary and added tokens); checks they are 0..n-1."""
    ids = set(base.get_vocab(with_added_tokens=True).values())
    n = max(ids) + 1
    if len(ids) != n:
        raise ExpansionError(f"base tokenizer ids are not contiguous: {len(ids)} ids, largest {n - 1}")
    return n


class _Builder:
    """Plans new vocabulary entries and merges, simulating BPE to know each word's current pieces."""

    def __init__(self, base: Tokenizer, family: Family, script: Script, banned: frozenset[str]):
        self.base = base
        self.family = family
        self.script = script
        self.banned = banned  # pieces no chain may create (they left the vocabulary in an earlier round)
        self.vocab = base.get_vocab(with_added_tokens=False)
        self.next_id = base_size(base)
        self.ranks: dict[tuple[str, str], int] = {}  # new merges only; all rank after base merges
        self.merges: list[tuple[str, str]] = []
        self.new: dict[str, NewPiece] = {}
        self._base_pieces: dict[str, list[str]] = {}

    def _base_segment(self, run: str) -> list[str]:
        if run not in self._base_pieces:
            self._base_pieces[run] = [t.value for t in self.base.model.tokenize(run)]
        return self._base_pieces[run]

    def segment(
        self, word: str, extra: dict[tuple[str, str], int], extra_chars: set[str], formed: set[str] | None = None
    ) -> list[str]:
        """Pieces of `word` under base merges, then new merges (committed and `extra`) by rank; `formed`
        collects the new pieces it passes through."""
        pieces: list[str] = []
        run = ""
        for ch in word:
            if ch in extra_chars or (self.family.name == "char_level" and ch in self.new):
                if run:
                    pieces += self._base_segment(run)
                    run = ""
                pieces.append(ch)
            else:
                run += ch
        if run:
            pieces += self._base_segment(run)
        if formed is not None:
            formed.update(p for p in pieces if p in self.new)
        while len(pieces) > 1:
            best = None
            for i in range(len(pieces) - 1):
                pair = (pieces[i], pieces[i + 1])
                rank = self.ranks.get(pair, extra.get(pair))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, i)
            if best is None:
                break
            i = best[1]
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
            if formed is not None:
                formed.add(pieces[i])
        return pieces

    def _choose(self, pieces: list[str]) -> tuple[str, str] | None:
        """The pair to merge next when a word has more than two pieces: a safe one, preferring pairs
        that start at a character boundary, then complete characters, then have no leading space,
        then are short, then leftmost (characters get built before words)."""
        options = []
        for i in range(len(pieces) - 1):
            joined = pieces[i] + pieces[i + 1]
            if (
                (joined in self.vocab and joined not in self.new)  # base merges would then see it
                or joined in self.banned
                or not self.family.merge_is_safe(joined, self.script)
            ):
                continue
            data = self.family.piece_bytes(joined)
            mid_char = 0x80 <= data[0] < 0xC0
            whole = self.family.piece_text(joined) is not None
            options.append((mid_char, not whole, data.startswith(b" "), len(data), i))
        if not options:
            return None
        i = min(options)[-1]
        return pieces[i], pieces[i + 1]

    def add(self, piece: str) -> bool:
        """Make `piece` reachable; False (nothing committed) if no chain of safe merges reaches it."""
        if piece in self.vocab:
            old = self.new.get(piece)
            if old is not None and old.kind == "bridge":
                self.new[piece] = NewPiece(old.id, old.piece, old.text, "selected")
            return True
        plan: list[tuple[str, str, str]] = []  # (left, right, result); left == right == "" adds a character
        extra: dict[tuple[str, str], int] = {}
        extra_chars: set[str] = set()
        if self.family.name == "char_level":
            for ch in dict.fromkeys(piece):
                if ch not in self.vocab and self.script.contains(ch):
                    plan.append(("", "", ch))
                    extra_chars.add(ch)
        while True:
            pieces = self.segment(piece, extra, extra_chars)
            if len(pieces) == 1:
                break
            pair = (pieces[0], pieces[1]) if len(pieces) == 2 else self._choose(pieces)
            if pair is None or not self.family.merge_is_safe(pair[0] + pair[1], self.script):
                return False
            result = pair[0] + pair[1]
            extra[pair] = len(self.ranks) + len(extra)
            plan.append((pair[0], pair[1], result))
        for left, right, result in plan:
            if left:
                self.ranks[(left, right)] = len(self.ranks)
                self.merges.append((left, right))
            if result in self.vocab:  # a merge reaching an existing piece another way
                continue
            kind = "selected" if result == piece else "bridge"
            self.vocab[result] = self.next_id
            self.new[result] = NewPiece(self.next_id, result, self.family.piece_text(result), kind)
            self.next_id += 1
        return True


    def served(self) -> list[NewPiece]:
        """The new pieces by id, each with the selected pieces whose tokenization passes through it."""
        serves: dict[str, list[str]] = {}
        for n in self.new.values():
            if n.kind == "selected":
                formed: set[str] = set()
                self.segment(n.piece, {}, set(), formed)
                for p in formed - {n.piece}:
                    serves.setdefault(p, []).append(n.piece)
        return [replace(n, serves=tuple(sorted(serves.get(n.piece, ())))) for n in sorted(self.new.values(), key=lambda n: n.id)]


def build_target(
    base: Tokenizer, family: Family, *, script: Script, pieces: list[str], banned: frozenset[str] = frozenset()
) -> TargetTokenizer:
    """The base tokenizer extended by `pieces` (vocabulary spellings), built in their order (see above),
    creating none of the `banned` pieces."""
    builder = _Builder(base, family, script, banned)
    unreachable = [p for p in dict.fromkeys(pieces) if not builder.add(p)]
    spec = json.loads(base.to_str())
    model = spec["model"]
    # Added tokens outside the model vocabulary (phi-2's whitespace runs) become model entries too, at
    # their ids: on loading, tokenizers re-numbers added tokens it cannot find in the model from the
    # model's size, which would collide with the new ids. No merge reaches them, so BPE never emits them.
    vocab = dict(builder.vocab)
    for added in spec["added_tokens"]:
        vocab.setdefault(added["content"], added["id"])
    model["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    model["merges"] = list(model["merges"]) + [f"{a} {b}" if as_strings else [a, b] for a, b in builder.merges]
    tok = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    new = builder.served()
    if tok.get_vocab(with_added_tokens=True) != {**base.get_vocab(with_added_tokens=True), **builder.vocab}:
        raise ExpansionError("internal: base ids moved in the target tokenizer")
    for n in new:  # the real BPE must agree with the plan: each new piece is one token on its own
        got = [t.value for t in tok.model.tokenize(n.piece)]
        if got != [n.piece]:
            raise ExpansionError(f"internal: new piece {n.piece!r} tokenizes to {got}, not itself")
    return TargetTokenizer(tok, base_size(base), new, unreachable)
