"""Loading a model directory under ZeRO-3 zero.Init (2 CPU ranks, gloo) equals a plain load."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from megaeeve import assets
from megaeeve.model import extend_model
from _model_helpers import expand, save_model, tiny_phi

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_zero3_load_equals_plain_load(tmp_path, phi2_tokenizer_dir):
    expanded = expand(assets.phi2_tokenizer(), tmp_path / "expanded")
    stage0 = tmp_path / "stage0"
    extend_model(save_model(tiny_phi(), tmp_path / "base"), phi2_tokenizer_dir, tokenizer=expanded, output=stage0)
    verdict = tmp_path / "verdict.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), str(REPO / "tests" / "_zero3_load_worker.py"),
                          str(stage0), str(verdict)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = json.loads(verdict.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["problems"] for r in ranks] == [[], []]
