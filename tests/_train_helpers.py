"""Helpers for the trainer tests: tiny stage-0 models, token datasets from real text, launching ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.torch import load_file

from megaeeve.tokenizer_io import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "megaeeve" / "train.py"


# Frequent Korean words and particles: as added tokens they occur in almost every Korean document.
NEW_TOKENS = ["대한민국", "헌법", "국민", "법률", "대통령", "국회", "정부", "의", "은", "는", "을", "에", "이", "하"]


def make_stage0(tmp: Path, arch: str, base_tokenizer_dir: Path) -> Path:
    """A stage-0 directory from a tiny random Phi (untied, lm_head bias) or Llama (tied) base model."""
    from _model_helpers import save_model, tiny_llama, tiny_phi

    from megaeeve import assets
    from megaeeve.model import extend_model

    base = tiny_phi() if arch == "phi" else tiny_llama()
    base_dir = save_model(base, tmp / f"{arch}-base")
    tok = load_tokenizer(base_tokenizer_dir)
    tok.add_tokens(NEW_TOKENS)
    tok_dir = assets.save_hf_tokenizer(tok, tmp / f"{arch}-expanded-tokenizer")
    out = tmp / f"{arch}-stage0"
    extend_model(base_dir, base_tokenizer_dir, tok_dir, out, pad_vocab_to_multiple_of=64)
    return out


def write_prefix(prefix: Path, tokenizer_dir: Path, docs: list[str], max_tokens: int = 400) -> Path:
    """Tokenize `docs` (+ EOS, each cut to `max_tokens`) into an indexed dataset at `prefix`."""
    from megaeeve.data.indexed import IndexedDatasetWriter

    tok = load_tokenizer(tokenizer_dir / "tokenizer.json")
    eos = tok.token_to_id("<|endoftext|>")
    writer = IndexedDatasetWriter(str(prefix), np.uint16)
    for enc in tok.encode_batch(docs):
        writer.add_document(np.array(enc.ids[: max_tokens - 1] + [eos], dtype=np.int64))
    writer.finalize()
    return prefix


def ds_config(path: Path, micro: int = 2, accum: int = 2, bf16: bool = False) -> Path:
    cfg = json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text())
    cfg.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum, bf16={"enabled": bf16})
    path.write_text(json.dumps(cfg))
    return path


def run_config(path: Path, run_dir: Path, model: Path, sources: list[dict], stages: dict, **extra) -> Path:
    raw = {
        "run_dir": str(run_dir), "model": str(model), "seq_length": 32, "seed": 7,
        "data": {"sources": sources, "valid_fraction": 0.2},
        "training": {"eval_samples": 4, "checkpoint_every": 0, "tensorboard": True, "progress_bar": False},
        "stages": stages, **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], world: int = 2, log: Path | None = None) -> list[subprocess.Popen]:
    """Start `world` ranks of train.py with plain env vars (as SLURM srun would), each in its own session."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
        out = open(f"{log}.rank{rank}", "w") if log else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, str(TRAIN), *args], env=env, cwd=REPO,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait(procs: list[subprocess.Popen], timeout: float = 900) -> list[int]:
    """Exit codes of all ranks; ranks still running 30 s after another one failed (stuck in a collective) are killed."""
    deadline, failed_at = time.monotonic() + timeout, None
    while any(p.poll() is None for p in procs):
        if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if (failed_at is not None and time.monotonic() > failed_at + 30) or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.05)
    return [p.wait() for p in procs]


def train_stage(ds: Path, cfg: Path, stage: int, log: Path, *extra: str, world: int = 2) -> int:
    """Run one stage to completion; returns the ranks' common exit code (fails if they differ).

    Retried when rank 0 lost its rendezvous port to another process on a shared machine (EADDRINUSE).
    """
    args = ["--ds_config", str(ds), "--config", str(cfg), "--stage", str(stage), *extra]
    for _ in range(3):
        codes = wait(launch(args, world, log))
        if codes == [0] * world or "EADDRINUSE" not in read_log(log):
            break
    assert len(set(codes)) == 1, f"ranks exited with {codes}; logs: {log}.rank*\n{read_log(log)}"
    return codes[0]


def read_log(log: Path) -> str:
    return "\n".join(Path(f"{log}.rank{r}").read_text()[-4000:] for r in range(2) if Path(f"{log}.rank{r}").exists())


def weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def metrics(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
