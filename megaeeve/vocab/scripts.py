"""Which characters belong to the target language: a named script or explicit code-point ranges.

A token is a target-language token when its text (after an optional leading space) is made only of
characters of the script. The script is data (sorted, non-overlapping ranges), so adding a language is
a new entry in `SCRIPTS` or a `--script U+0E00-U+0E7F` argument, not code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

import numpy as np

# Whole Unicode blocks, so that a partial UTF-8 prefix (e.g. the first two bytes of a syllable) is
# target-language for every character it can start (see `Script.owns_all_completions`).
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "hangul": (
        (0x1100, 0x11FF),  # Hangul Jamo
        (0x3130, 0x318F),  # Hangul Compatibility Jamo
        (0xA960, 0xA97F),  # Hangul Jamo Extended-A
        (0xAC00, 0xD7AF),  # Hangul Syllables
        (0xD7B0, 0xD7FF),  # Hangul Jamo Extended-B
        (0xFFA0, 0xFFDC),  # Halfwidth Hangul
    ),
    "thai": ((0x0E00, 0x0E7F),),  # the Thai block (letters, vowel and tone marks, digits)
}


@dataclass(frozen=True)
class Script:
    """A set of code points given as inclusive ranges."""

    name: str
    ranges: tuple[tuple[int, int], ...]

    def contains(self, ch: str) -> bool:
        cp = ord(ch)
        return any(lo <= cp <= hi for lo, hi in self.ranges)

    def is_target_text(self, text: str) -> bool:
        """True for non-empty text made only of script characters, after at most one leading space."""
        body = text[1:] if text.startswith(" ") else text
        return bool(body) and all(self.contains(c) for c in body)

    def count_chars(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(code points, counts) of the script's characters in `texts`; vectorised, no per-char Python."""
        joined = "".join(texts)
        cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        mask = np.zeros(cps.shape, dtype=bool)
        for lo, hi in self.ranges:
            mask |= (cps >= lo) & (cps <= hi)
        return np.unique(cps[mask], return_counts=True)

    @functools.lru_cache(maxsize=None)
    def owns_all_completions(self, prefix: bytes) -> bool:
        """True if every character whose UTF-8 encoding starts with the partial `prefix` is in the script.

        Decides whether a merge that produces a partial character can fire on text without the script.
        """
        if not prefix:
            return False
        lead = prefix[0]
        length = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
        if not length or len(prefix) >= length:
            return False
        missing = length - len(prefix)
        for tail in range(64**missing):
            cont = bytes(0x80 | ((tail >> (6 * i)) & 0x3F) for i in reversed(range(missing)))
            try:
                ch = (prefix + cont).decode("utf-8")
            except UnicodeDecodeError:  # surrogates, overlongs: never in valid text
                continue
            if not self.contains(ch):
                return False
        return True


def parse_script(spec: str) -> Script:
    """`hangul` (a name in SCRIPTS) or comma-separated ranges like `U+0E00-U+0E7F,U+0E80-U+0EFF`."""
    name = spec.strip().lower()
    if name in SCRIPTS:
        return Script(name, SCRIPTS[name])
    ranges = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            lo_cp = int(lo.strip().upper().removeprefix("U+"), 16)
            hi_cp = int(hi.strip().upper().removeprefix("U+"), 16) if hi else lo_cp
            if not 0 <= lo_cp <= hi_cp <= 0x10FFFF:
                raise ValueError
            ranges.append((lo_cp, hi_cp))
    except ValueError:
        raise ValueError(
            f"--script {spec!r}: expected one of {sorted(SCRIPTS)} or ranges like U+0E00-U+0E7F[,U+...]"
        ) from None
    return Script(spec.strip(), tuple(sorted(ranges)))
