"""Preemption: SIGUSR1 / SIGTERM -> checkpoint at the next step boundary, then exit for requeue.

Exit codes of `megaeeve/train.py` (the SLURM scripts rely on them):

    0   the stage finished (final/ and DONE written), or --dry-run printed its table
    2   bad configuration or input (message names the file and key), or the stage may not start
        (predecessor without DONE, vocabulary/shape mismatch, completed stage without --overwrite)
    99  REQUEUE_EXIT_CODE: a signal arrived; a checkpoint of the last finished step was saved and
        the same command resumes from it (`scontrol requeue` / rerun)

A signal may reach only some ranks (SLURM's `--signal=B:USR1@N` goes to the batch shell, which
forwards it), so ranks agree with an all-reduce at every step boundary before stopping together.
"""

from __future__ import annotations

import signal

import torch.distributed as dist

from megaeeve.training.collectives import all_reduce_values

REQUEUE_EXIT_CODE = 99
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Remembers that a stop signal arrived; the training loop polls it at step boundaries."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> "StopRequest":
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def agreed(self) -> bool:
        """True on every rank if any rank got a stop signal (collective: call on all ranks)."""
        return bool(all_reduce_values([1.0 if self.signum is not None else 0.0], dist.ReduceOp.MAX)[0])
