"""The stage plan is built once: one real stage reads each model directory's megaeeve_model.json once per rank,
and only torch.distributed's two wrappers ask it for ranks (everything else takes them from the plan)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from _train_helpers import REPO, ds_config, free_port, make_stage0, read_log, run_config, wait, write_prefix

WORKER = Path(__file__).resolve().parent / "_count_opens_worker.py"
# The only modules that may ask torch.distributed for a rank or the world size.
RANK_SOURCES = {"megaeeve/training/collectives.py", "megaeeve/model/partition.py"}


def _stage_opens(args: list[str], out: Path, world: int = 2) -> list[dict[str, list[str]]]:
    """Run one stage on `world` ranks under the worker's audit hook; per rank, each megaeeve_model.json opened ->
    how it was opened ("read", "write", "copy"), in order."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        with open(f"{out}.rank{rank}", "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), *args], env=env, cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    assert wait(procs) == [0] * world, read_log(out)
    counts = []
    for rank in range(world):
        opens: dict[str, list[str]] = defaultdict(list)
        for path, mode in json.loads(Path(f"{out}.rank{rank}.json").read_text())["opens"]:
            opens[path].append(mode)
        counts.append(dict(opens))
    return counts


@pytest.mark.slow
def test_a_stage_reads_the_model_metadata_once_per_rank(tmp_path, phi2_tokenizer_dir, korean_split, english_docs):
    """Stage 1 starts from the stage-0 model, stage 2 from stage 1's final/ and checks it against the stage-0
    model: each directory's megaeeve_model.json is read once on each rank. The one other open is rank 0 copying
    the input's file, byte for byte, into the stage's final/ (the files it writes there are only written)."""
    stage0 = make_stage0(tmp_path, "phi", phi2_tokenizer_dir)
    ko = write_prefix(tmp_path / "ko", stage0, korean_split[0][:20])
    en = write_prefix(tmp_path / "en", stage0, english_docs[:20])
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    run = tmp_path / "run"
    cfg = run_config(tmp_path / "run.yaml", run, stage0, sources, {1: {"steps": 1}, 2: {"steps": 1}},
                     run_stages=[1, 2], training={"eval_samples": 2, "checkpoint_every": 0, "report_to": [],
                                                  "progress_bar": False})
    ds = ds_config(tmp_path / "ds.json", micro=1, accum=1)
    meta = "megaeeve_model.json"
    for stage, inputs in ((1, [stage0]), (2, [stage0, run / "stage-1" / "final"])):
        args = ["--ds_config", str(ds), "--config", str(cfg), "--stage", str(stage)]
        per_rank = _stage_opens(args, tmp_path / f"stage{stage}.log")
        src = str((inputs[-1] / meta).resolve())
        for rank, opens in enumerate(per_rank):
            read = {path: kinds for path, kinds in opens.items() if kinds != ["write"]}
            expected = {str((d / meta).resolve()): ["read"] for d in inputs}
            if rank == 0:
                expected[src] = ["read", "copy"]  # read by the plan, then copied into final/ by the hand-off
            assert read == expected, (stage, rank, opens)
            written = opens.keys() - read.keys()  # the copy's destination in final/'s temporary directory
            assert rank == 0 and len(written) == 1 or not written, (stage, rank, opens)
            assert all(Path(path).parent.parent == run / f"stage-{stage}" for path in written), (stage, rank, opens)
        assert (run / f"stage-{stage}" / "DONE").is_file()


def test_only_the_collectives_ask_torch_distributed_for_ranks():
    """Rank and world come from the stage plan; only collectives.py and partition.py call torch.distributed's
    get_rank / get_world_size."""
    pattern = re.compile(r"dist\.get_rank|get_world_size")
    package = REPO / "megaeeve"
    callers = sorted(str(p.relative_to(REPO)) for p in package.rglob("*.py") if pattern.search(p.read_text()))
    assert set(callers) <= RANK_SOURCES, callers
