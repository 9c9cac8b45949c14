"""Steps 4-7: count, drop rare new pieces, add frequent missing characters, until nothing changes.

Convergence: a multi-character piece, once dropped, never returns; a single target character is kept
(or added) exactly when the *character* occurs at least `threshold` times in the counting corpus, which
does not depend on the tokenizer. So characters are settled after round 1 and later rounds only drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from tokenizers import Tokenizer

from megaeeve.vocab.count import Counts, count_corpus
from megaeeve.vocab.family import Family
from megaeeve.vocab.merge import ExpansionError, TargetTokenizer, build_target
from megaeeve.vocab.scripts import Script


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
    dropped: list[str] = field(default_factory=list)  # texts of pieces seen fewer than threshold times
    added: list[str] = field(default_factory=list)  # missing characters seen at least threshold times
    unreachable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"round {self.round}: {self.new_tokens} new tokens ({self.selected} selected + {self.bridges} bridges),"
            f" {self.tokens_counted:,} tokens counted in {self.seconds:.1f}s, threshold {self.threshold}:"
            f" dropped {len(self.dropped)}, added {len(self.added)}"
            + (f", unreachable {len(self.unreachable)}" if self.unreachable else "")
        )


@dataclass
class Refined:
    target: TargetTokenizer
    counts: Counts  # of the final tokenizer (the last round counted it)
    rounds: list[Round]
    threshold: int


def refine(
    base: Tokenizer,
    family: Family,
    script: Script,
    candidates: Sequence[str],
    count_files: Sequence[str],
    threshold: Threshold,
    workers: int = 1,
    progress: bool = True,
    log=print,
) -> Refined:
    """Run rounds of build -> count -> drop/add until a round neither drops nor adds.

    `candidates` come in the intermediate tokenizer's merge order, which the build keeps; characters added
    by step 6 go first, most frequent first.
    """
    rank = {p: (1, i, "") for i, p in enumerate(candidates)}
    selected = set(candidates)
    base_vocab = base.get_vocab(with_added_tokens=True)
    unreachable: set[str] = set()
    rounds: list[Round] = []
    limit: int | None = None
    while True:
        target = build_target(base, family, script, sorted(selected, key=rank.__getitem__))
        unreachable |= set(target.unreachable)
        selected -= set(target.unreachable)
        if not target.new:
            raise ExpansionError(
                f"nothing to add: no new {script.name} token survives"
                + (f" the minimum frequency {limit}" if limit is not None else "")
            )
        counts = count_corpus(
            target.tokenizer, count_files, script, workers, progress=progress, desc=f"round {len(rounds) + 1}"
        )
        if counts.tokens == 0:
            raise ExpansionError(f"counting corpus {', '.join(count_files)} has no text")
        limit = threshold.resolve(counts.tokens) if limit is None else limit
        vocab = target.tokenizer.get_vocab(with_added_tokens=True)
        frequent_chars = {family.text_piece(ch) for ch, n in counts.char_counts.items() if n >= limit}
        dropped = sorted(
            p for p in selected if p not in frequent_chars and counts.token_counts[vocab[p]] < limit
        )
        added = sorted(frequent_chars - selected - set(base_vocab) - unreachable)
        rnd = Round(
            round=len(rounds) + 1,
            selected=len(selected),
            bridges=sum(n.kind == "bridge" for n in target.new),
            new_tokens=len(target.new),
            tokens_counted=counts.tokens,
            documents=counts.documents,
            threshold=limit,
            seconds=round(counts.seconds, 3),
            dropped=[family.piece_text(p) or p for p in dropped],
            added=[family.piece_text(p) or p for p in added],
            unreachable=[family.piece_text(p) or p for p in sorted(target.unreachable)],
        )
        rounds.append(rnd)
        log(rnd.summary())
        if not dropped and not added:
            return Refined(target, counts, rounds, limit)
        rank.update({p: (0, -counts.char_counts[family.piece_text(p)], p) for p in added})
        selected = (selected - set(dropped)) | set(added)
