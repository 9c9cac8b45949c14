"""Run by tests/test_stage_plan.py as one rank of a stage: megaeeve/train.py's main under an audit hook that
records every open of a file named megaeeve_model.json (its path, and "read", "write" or "copy": a read inside
shutil's copyfile), written to OUT.rankR.json when the stage ends, then leaves as train.py does.

    python tests/_count_opens_worker.py OUT train.py-arguments...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPENS: list[tuple[str, str]] = []


def _record(event: str, args: tuple) -> None:
    """The interpreter's "open" audit event (builtins.open, io.open, os.open): (path, mode or None, flags)."""
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    if os.path.basename(path) != "megaeeve_model.json":
        return
    kind = "read" if args[1] == "r" or (args[1] is None and args[2] & os.O_ACCMODE == os.O_RDONLY) else "write"
    frame = sys._getframe(1)
    while frame is not None:
        if kind == "read" and frame.f_code.co_name == "copyfile" and frame.f_globals.get("__name__") == "shutil":
            kind = "copy"  # the source of a copy (its destination stays "write")
        frame = frame.f_back
    OPENS.append((os.path.abspath(path), kind))


if __name__ == "__main__":
    sys.addaudithook(_record)
    from megaeeve.train import main

    code = main(sys.argv[2:])
    Path(f"{sys.argv[1]}.rank{os.environ['RANK']}.json").write_text(json.dumps({"code": code, "opens": OPENS}))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as train.py: no interpreter finalization after a stage
