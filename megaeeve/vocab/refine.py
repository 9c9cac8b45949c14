"""Steps 4-7: count, drop rare new pieces, add frequent missing characters, until nothing changes.

The card's words, taken literally: a token seen *fewer than* `threshold` times is removed (so one seen
exactly `threshold` times stays); a missing single character seen *more than* `threshold` times is added.
A single character that step 5 would remove and step 6 add back (its token is rare, the character is
frequent: most of its occurrences sit inside longer tokens) stays, reported with its character count.

A rare selected piece that other selected pieces are built from stays as a *bridge* (`kept_as_bridges`);
every bridge is reported with its count and the selected pieces it serves. A round's `dropped` lists the
pieces its vocabulary has and the next round's lacks; they are banned from later builds, so no dropped
piece ever returns.

Convergence: after round 1 only characters could be added, and those are exactly the characters seen more
than `threshold` times, which does not depend on the tokenizer: round 1 adds them all and none is ever rare.
Every later round removes at least one selected piece, or stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tokenizers import Tokenizer

from megaeeve.errors import ExpansionError
from megaeeve.log import logger
from megaeeve.vocab.count import Counts, count_corpus
from megaeeve.vocab.family import Family
from megaeeve.vocab.merge import TargetTokenizer, build_target
from megaeeve.vocab.scripts import Script

log = logger(__name__)


@dataclass(frozen=True)
class Threshold:
    """Minimum frequency: an absolute count, or a rate per million tokens of the counting corpus."""

    count: int | None = None
    per_million: float | None = None

    def resolve(self, tokens: int) -> int:
        """The absolute count; a rate is applied to the round-1 token count (fixed afterwards)."""
        if self.count is not None:
            return self.count
        assert self.per_million is not None
        return max(1, math.ceil(self.per_million * tokens / 1e6))


@dataclass
class Round:
    round: int
    selected: int  # selected pieces going into this round
    bridges: int
    new_tokens: int
    tokens_counted: int
    documents: int
    threshold: int
    seconds: float
    dropped: list[str] = field(default_factory=list)  # in this round's vocabulary, not in the next one's
    added: list[str] = field(default_factory=list)  # missing characters seen more than threshold times
    kept_as_bridges: list[str] = field(default_factory=list)  # below threshold, but other selected pieces need them
    unreachable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"round {self.round}: {self.new_tokens} new tokens ({self.selected} selected + {self.bridges} bridges),"
            f" {self.tokens_counted:,} tokens counted in {self.seconds:.1f}s, threshold {self.threshold}:"
            f" dropped {len(self.dropped)}, added {len(self.added)}"
            + (f", kept as bridges {len(self.kept_as_bridges)}" if self.kept_as_bridges else "")
            + (f", unreachable {len(self.unreachable)}" if self.unreachable else "")
        )


@dataclass
class Refined:
    target: TargetTokenizer
    counts: Counts  # of the final tokenizer (the last round counted it)
    rounds: list[Round]
    threshold: int


@dataclass
class _Selection:
    """The selected pieces, the order they are built in, and what can no longer be built."""

    pieces: set[str]
    rank: dict[str, tuple]  # build order: added characters (most frequent first), then the candidates' order
    banned: set[str] = field(default_factory=set)  # left the vocabulary in an earlier round
    unreachable: set[str] = field(default_factory=set)

    def build(self, base: Tokenizer, family: Family, script: Script, limit: int | None) -> TargetTokenizer:
        target = build_target(
            base, family, script=script, pieces=sorted(self.pieces, key=self.rank.__getitem__),
            banned=frozenset(self.banned),
        )
        self.unreachable |= set(target.unreachable)
        self.pieces -= set(target.unreachable)
        if not target.new:
            raise ExpansionError(
                f"nothing to add: no new {script.name} token survives"
                + (f" the minimum frequency {limit}" if limit is not None else "")
            )
        return target


def _texts(family: Family, pieces: set[str]) -> list[str]:
    return [family.piece_text(p) or p for p in sorted(pieces)]


def refine(
    base: Tokenizer,
    family: Family,
    *,
    script: Script,
    candidates: Sequence[str],
    count_files: Sequence[str],
    threshold: Threshold,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = log.info,
) -> Refined:
    """Run rounds of build -> count -> drop/add until a round neither drops nor adds.

    `candidates` come in the intermediate tokenizer's merge order, which the build keeps; characters added
    by step 6 go first, most frequent first. `log` takes each round's summary (default: this module's logger).
    """
    selection = _Selection(set(candidates), {p: (1, i, "") for i, p in enumerate(candidates)})
    base_vocab = base.get_vocab(with_added_tokens=True)
    rounds: list[Round] = []
    limit: int | None = None
    target = selection.build(base, family, script, None)
    while True:
        counts = count_corpus(
            target.tokenizer, count_files, script=script, workers=workers, progress=progress,
            desc=f"round {len(rounds) + 1}",
        )
        if counts.tokens == 0:
            raise ExpansionError(f"counting corpus {', '.join(count_files)} has no text")
        limit = threshold.resolve(counts.tokens) if limit is None else limit
        vocab = target.tokenizer.get_vocab(with_added_tokens=True)
        frequent_chars = {family.text_piece(ch) for ch, n in counts.char_counts.items() if n > limit}
        rare = {p for p in selection.pieces if p not in frequent_chars and counts.token_counts[vocab[p]] < limit}
        added = frequent_chars - selection.pieces - set(base_vocab) - selection.unreachable - selection.banned
        rnd = Round(
            round=len(rounds) + 1,
            selected=len(selection.pieces),
            bridges=sum(n.kind == "bridge" for n in target.new),
            new_tokens=len(target.new),
            tokens_counted=counts.tokens,
            documents=counts.documents,
            threshold=limit,
            seconds=round(counts.seconds, 3),
            added=_texts(family, added),
            unreachable=_texts(family, set(target.unreachable)),
        )
        rounds.append(rnd)
        if not rare and not added:
            log(rnd.summary())
            return Refined(target, counts, rounds, limit)
        selection.rank.update({p: (0, -counts.char_counts[family.piece_text(p)], p) for p in added})
        selection.pieces = (selection.pieces - rare) | added
        following = selection.build(base, family, script, limit)
        now, then = {n.piece for n in target.new}, {n.piece for n in following.new}
        selection.banned |= now - then
        rnd.dropped = _texts(family, now - then)
        rnd.kept_as_bridges = _texts(family, rare & then)
        log(rnd.summary())
        target = following
