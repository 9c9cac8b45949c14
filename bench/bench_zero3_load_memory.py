"""Peak host memory of loading a model directory: plain vs under ZeRO-3 zero.Init (2 CPU ranks, gloo).

On the CPU accelerator every partition lives in host memory, so this is the worst case for a node;
on GPUs the partitions go to device memory and the host keeps only rank 0's one-tensor-at-a-time read.

    python bench/bench_zero3_load_memory.py --model-dir runs/NAME/stage-0
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaeeve.model.checkpoint import MODEL_FILE  # noqa: E402

ZERO3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(model_dir: str, zero3: bool, out: str) -> None:
    """Load once, write this process's peak RSS (and rank) to `out`."""
    import torch.distributed as dist

    from megaeeve.model import load_model_dir

    import psutil

    if zero3:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_dir))]  # imports count before the load
    baseline = psutil.Process().memory_info().rss / 2**20
    model = load_model_dir(model_dir, ds_config=ZERO3 if zero3 else None)
    rank = dist.get_rank() if zero3 else 0
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed transients back to the OS: what the model really holds
    held = psutil.Process().memory_info().rss / 2**20
    Path(f"{out}.{rank}").write_text(json.dumps({"rank": rank, "peak_mb": _peak_mb(), "imports_mb": baseline,
                                                 "after_mb": held}))
    del model


def _run(model_dir: str, zero3: bool, tmp: str) -> list[dict]:
    out = os.path.join(tmp, "zero3" if zero3 else "plain")
    me = [str(Path(__file__).resolve()), "--worker", "--model-dir", model_dir, "--out", out] + (
        ["--zero3"] if zero3 else [])
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if zero3:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *me]
    else:
        cmd = [sys.executable, *me]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2 if zero3 else 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--zero3", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.model_dir, args.zero3, args.out)
        return 0
    size_mb = (Path(args.model_dir) / MODEL_FILE).stat().st_size / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("plain load, 1 process", _run(args.model_dir, False, tmp)),
                ("ZeRO-3 zero.Init load, 2 ranks", _run(args.model_dir, True, tmp))]
    print(f"{MODEL_FILE}: {size_mb:.0f} MiB ({args.model_dir})")
    print()
    print("| load | before load (imports, dist) MiB | peak RSS MiB | RSS held after load (malloc_trim) MiB | node peak total MiB |")
    print("|---|---|---|---|---:|")
    for name, ranks in rows:
        cols = [", ".join(f"{r[key]:.0f}" for r in ranks) for key in ("imports_mb", "peak_mb", "after_mb")]
        print(f"| {name} | {' | '.join(cols)} | {sum(r['peak_mb'] for r in ranks):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
