"""Progress of long offline work (counting, tokenizing): a tqdm bar on a terminal, plain lines elsewhere.

A SLURM `.out` file or a pipe gets no bar (tqdm redraws it with carriage returns, one endless line in a file).
It gets a line through the package logger every `every` seconds and one at the end, on stderr where the bar
would draw: documents, documents per second, tokens per second and, once a part of the work has finished, the
ETA (from the parts finished so far: the work is cut into parts of similar size).
"""

from __future__ import annotations

import time

from megaeeve.log import STDERR, logger, on_terminal

log = logger(__name__)


class Progress:
    """Documents (or other `unit`s) and tokens done out of `parts` parts of work; does nothing when not `enabled`
    (a rank other than 0, or --no-progress)."""

    def __init__(self, desc: str, parts: int, enabled: bool = True, every: float = 30.0, unit: str = "docs") -> None:
        self.desc, self.parts, self.enabled, self.every, self.unit = desc, parts, enabled, every, unit
        self.docs = self.tokens = self.parts_done = 0
        self.started = self.last = time.perf_counter()
        self.bar = None
        if enabled and on_terminal():
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit=f" {unit}", unit_scale=True, smoothing=0.1, dynamic_ncols=True)

    def update(self, docs: int, tokens: int) -> None:
        """`docs` more documents (units) of `tokens` tokens in all are done."""
        if not self.enabled:
            return
        self.docs += docs
        self.tokens += tokens
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(docs)
            self.bar.set_postfix_str(f"{self.tokens / max(now - self.started, 1e-9):,.0f} tokens/s", refresh=False)
        elif now - self.last >= self.every:
            self.last = now
            self._line(now, final=False)

    def part_done(self) -> None:
        """One of the `parts` has finished: what the ETA is measured by."""
        self.parts_done += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line(time.perf_counter(), final=True)

    def _line(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        text = (f"{self.desc}: {self.docs:,} {self.unit}, {self.docs / elapsed:,.1f} {self.unit}/s, "
                f"{self.tokens / elapsed:,.0f} tokens/s")
        if final:
            text += f", {elapsed:.1f} s"
        elif 0 < self.parts_done < self.parts:
            eta = elapsed * (self.parts - self.parts_done) / self.parts_done
            text += f", ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
        log.info(text, extra=STDERR)
