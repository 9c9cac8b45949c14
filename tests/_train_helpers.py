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
import torch
import yaml
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from megaeeve.model.weights import load_weights
from megaeeve.stages import DEFAULT_STAGES

from megaeeve.tokenizer_io import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "megaeeve" / "train.py"


# Frequent Korean words and particles: as added tokens they occur in almost every Korean document.
NEW_TOKENS = ["대한민국", "헌법", "국민", "법률", "대통령", "국회", "정부", "의", "은", "는", "을", "에", "이", "하"]


def make_stage0(tmp: Path, arch: str, base_tokenizer_dir: Path) -> Path:
    """A stage-0 directory from a tiny random Phi (untied, lm_head bias), Llama or GPT-2 (tied) base model."""
    from _model_helpers import save_model, tiny_gpt2, tiny_llama, tiny_phi

    from megaeeve import assets
    from megaeeve.model import extend_model

    rows = load_tokenizer(base_tokenizer_dir).get_vocab_size(with_added_tokens=True)
    padded = -(-rows // 64) * 64
    base = tiny_phi() if arch == "phi" else tiny_gpt2(padded) if arch == "gpt2" else tiny_llama(vocab_size=padded)
    base_dir = save_model(base, tmp / f"{arch}-base")
    tok = load_tokenizer(base_tokenizer_dir)
    tok.add_tokens(NEW_TOKENS)
    tok_dir = assets.save_hf_tokenizer(tok, tmp / f"{arch}-expanded-tokenizer")
    out = tmp / f"{arch}-stage0"
    extend_model(base_dir, base_tokenizer_dir, tokenizer=tok_dir, output=out, pad_vocab_to_multiple_of=64)
    return out


def write_prefix(prefix: Path, tokenizer_dir: Path, docs: list[str], max_tokens: int = 400,
                 eos_token: str = "<|endoftext|>") -> Path:
    """Tokenize `docs` (+ EOS, each cut to `max_tokens`) into an indexed dataset at `prefix`."""
    from megaeeve.data.indexed import IndexedDatasetWriter

    tok = load_tokenizer(tokenizer_dir / "tokenizer.json")
    eos = tok.token_to_id(eos_token)
    writer = IndexedDatasetWriter(str(prefix), np.uint16 if tok.get_vocab_size() <= 2**16 else np.int32)
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
        "training": {"eval_samples": 4, "checkpoint_every": 0, "report_to": ["tensorboard"], "progress_bar": False},
        "stages": stages, **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], world: int = 2, log: Path | None = None,
           ranks: list[int] | None = None) -> list[subprocess.Popen]:
    """Start `world` ranks of train.py (or only `ranks` of them) with plain env vars (as SLURM srun would),
    each in its own session."""
    port = str(free_port())
    procs = []
    for rank in range(world) if ranks is None else ranks:
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
    return "\n".join(p.read_text()[-4000:] for p in sorted(log.parent.glob(f"{log.name}.rank*")))


def weights(model_dir: Path) -> dict:
    return load_weights(model_dir)


def metrics(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def split_model_on_meta(model_dir: Path) -> torch.nn.Module:
    """A model directory's split model, built on the meta device (its structure, no weights)."""
    from transformers import AutoConfig

    from megaeeve.model import read_model_meta
    from megaeeve.model.checkpoint import build_split_model

    with torch.device("meta"):
        return build_split_model(AutoConfig.from_pretrained(str(model_dir)), read_model_meta(model_dir), torch.float32)


def roles_of(model_dir: Path) -> dict[str, str]:
    """Parameter roles of a model directory's split model."""
    from megaeeve.model import parameter_roles

    return parameter_roles(split_model_on_meta(model_dir))


def engine_view(run_dir: Path, stage: int) -> dict[str, torch.Tensor]:
    """The stage's weights as DeepSpeed's own zero_to_fp32 consolidates its last checkpoint."""
    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / f"stage-{stage}" / "checkpoints"))


def chain_view(chain: dict, stage: int) -> dict[str, torch.Tensor]:
    """engine_view of a chain's stage, read once and kept in the chain: it is slow, and a test may remove a stage's
    folder once it is checked. Kept per chain, not by path, so a folder name pytest reuses never returns a stale
    view."""
    views = chain.setdefault("views", {})
    if stage not in views:
        views[stage] = engine_view(chain["run_dir"], stage)
    return views[stage]


def last_trained_value(chain: dict, stage: int, name: str) -> torch.Tensor:
    """`name` as seen from outside the hand-off before `stage`: DeepSpeed's zero_to_fp32 view (fp32 masters) of
    the latest earlier stage that trained it, else the stage-0 model. Never a file export_final copied."""
    earlier = chain["stages"][: chain["stages"].index(stage)]
    for s in reversed(earlier):
        if chain["roles"][name] in DEFAULT_STAGES[s].trainable:
            return chain_view(chain, s)[name]
    return weights(chain["model"])[name]


def check_stage(chain: dict, stage: int) -> None:
    """Against DeepSpeed's view of the stage's checkpoint: trainable tensors changed and handed off as their
    fp32 masters, frozen ones bitwise unmoved (in the engine's dtype) and handed off at the fp32 value their last
    training left (zero_to_fp32 of that stage) or the stage-0 model's, Adam state only for the trainable ones."""
    run_dir, roles, world = chain["run_dir"], chain["roles"], chain["world"]
    i = chain["stages"].index(stage)
    src = chain["model"] if i == 0 else run_dir / f"stage-{chain['stages'][i - 1]}" / "final"
    before, after = weights(src), weights(run_dir / f"stage-{stage}" / "final")
    view = chain_view(chain, stage)
    trainable = {n for n, r in roles.items() if r in DEFAULT_STAGES[stage].trainable}
    assert trainable and set(after) == set(before) and set(roles) <= set(view)
    for name in roles:
        if name in trainable:
            assert not torch.equal(view[name], before[name]), f"stage {stage}: trainable {name} did not change"
            assert after[name].dtype == torch.float32
            assert torch.equal(after[name], view[name]), f"stage {stage}: {name} hand-off is not the fp32 master"
            if chain["bf16"]:
                assert not torch.equal(after[name], after[name].bfloat16().float()), f"{name} lost fp32 precision"
        else:
            expected = last_trained_value(chain, stage, name)
            # A bf16 engine holds (and its checkpoint stores) frozen weights in bf16.
            held = expected.bfloat16().float() if chain["bf16"] else expected
            assert torch.equal(view[name], held), f"stage {stage}: frozen {name} moved in the engine"
            assert torch.equal(after[name], expected), f"stage {stage}: frozen {name} not handed off at its fp32 value"
    ckpt = run_dir / f"stage-{stage}" / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    optimized, numel = set(), 0
    for rank in range(world):
        states = torch.load(ckpt / tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", weights_only=False)
        optimized |= {n for shapes in states["param_shapes"] for n in shapes}
        optim_file, = (ckpt / tag).glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")  # bf16_ prefix in bf16
        optim = torch.load(optim_file, weights_only=False)
        for group_state in optim["optimizer_state_dict"]["optimizer_state_dict"]["state"].values():
            numel += group_state["exp_avg"].numel()
    assert optimized == trainable
    expected = sum(before[n].numel() for n in trainable)
    assert expected <= numel < expected + world * 64 * len(trainable), "Adam moments cover more than the trainable set"
