"""Host memory per rank at a stage's hand-off: the sharded final/ against the largest shard.

The hand-off (megaeeve/training/checkpoint.py export_final) writes final/ in shards of at most
--shard-mb; shard k is assembled and written by rank k mod world while the others stream past, so a
rank should hold at most one shard plus the parameter being gathered (which ZeRO-3's full-parameter
read materialises on every rank). This builds stage-0 directories of phi-2's and SOLAR-10.7B's widths
(configs/models/, random weights, --layers layers), loads each under ZeRO-3 bf16 on --nproc CPU ranks,
builds the stage-4 engine (all output rows train: the largest trainable set of the embedding stages)
and samples each rank's anonymous RSS (RssAnon: file pages mapped from safetensors are page cache)
while export_final runs. Reported: its growth over the pre-hand-off level, against the largest shard
and the largest parameter.

    python bench/bench_handoff_memory.py [--models phi-2 solar-10.7b] [--layers 2] [--shard-mb 512] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import processor, write_results  # noqa: E402


def make_model_dir(name: str, layers: int, out: Path) -> int:
    """A stage-0 directory of the shipped config's widths with `layers` layers and random weights;
    returns the largest parameter's fp32 bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from megaeeve.model.checkpoint import MODEL_FILE, build_split_model, read_model_meta

    src = REPO / "configs" / "models" / name
    shutil.copytree(src, out)
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = build_split_model(AutoConfig.from_pretrained(str(out)), read_model_meta(out), torch.float32)
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(p.shape, generator=generator) * 0.02 for k, p in model.named_parameters()}
    save_file(state, str(out / MODEL_FILE))
    return max(t.numel() for t in state.values()) * 4


def anonymous_rss() -> int:
    """Private (anonymous) resident bytes: RSS less the file pages that reading safetensors through mmap
    leaves resident, which the kernel reclaims as page cache."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def worker(model_dir: str, shard_mb: int, out: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from megaeeve.model import load_model_dir, parameter_roles
    from megaeeve.stages import DEFAULT_STAGES
    from megaeeve.training.checkpoint import export_final, load_fp32_masters
    from megaeeve.training.engine import freeze_for_stage, initialize_engine

    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    ds = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}
    model = load_model_dir(model_dir, ds, torch.bfloat16)
    roles = parameter_roles(model)
    freeze_for_stage(model, roles, DEFAULT_STAGES[4])
    initialize_engine(model, roles, stage=DEFAULT_STAGES[4], ds_config=ds, total_steps=1)
    load_fp32_masters(model, Path(model_dir))
    peak, running = [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], anonymous_rss())
            time.sleep(0.005)

    dist.barrier()
    before = anonymous_rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    export_final(model, Path(model_dir), out_dir=Path(model_dir).parent / "final", shard_bytes=shard_mb * 2**20,
                 rank=rank, world=dist.get_world_size())
    elapsed = time.perf_counter() - started
    running[0] = False
    thread.join()
    Path(f"{out}.{rank}").write_text(json.dumps({"before_mb": before / 2**20, "peak_mb": peak[0] / 2**20,
                                                 "seconds": elapsed}))


def run(model_dir: Path, shard_mb: int, nproc: int, tmp: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp / "rank"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                    str(port), __file__, "--worker", str(model_dir), "--shard-mb", str(shard_mb), "--out", str(out)],
                   env=env, check=True, capture_output=True)
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(nproc)]


def main() -> None:
    from megaeeve.model.weights import weight_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["phi-2", "solar-10.7b"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--shard-mb", type=int, default=512)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--write-results", action="store_true", help="replace this bench's section of bench/RESULTS.md")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.shard_mb, args.out)
        return
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="megaeeve-handoff-") as d:
            model_dir = Path(d) / "stage0"
            largest_param = make_model_dir(name, args.layers, model_dir) / 2**20
            ranks = run(model_dir, args.shard_mb, args.nproc, Path(d))
            final = Path(d) / "final"
            sizes = [(final / f).stat().st_size / 2**20 for f in weight_files(final) if f.endswith(".safetensors")]
        rows.append((name, sum(sizes), len(sizes), max(sizes), largest_param, ranks))
        print(f"{name}: {ranks}", file=sys.stderr, flush=True)
    lines = [
        "## Hand-off host memory per rank (sharded final/)",
        "",
        f"`python bench/bench_handoff_memory.py --layers {args.layers} --shard-mb {args.shard_mb} --nproc {args.nproc}` "
        f"on {processor()} CPU ranks (gloo), ZeRO-3 bf16, stage 4 engine, random "
        "weights. Growth = peak anonymous RSS (RssAnon) during export_final minus its level just before, per rank.",
        "",
        "| widths | final/ (fp32) | shards | largest shard | largest parameter (fp32) | growth per rank | hand-off time |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} ({args.layers} layers) | {total:,.0f} MiB | {n} | {shard:,.0f} MiB | {param:,.0f} MiB | "
          f"{', '.join(format(r['peak_mb'] - r['before_mb'], ',.0f') for r in ranks)} MiB | "
          f"{max(r['seconds'] for r in ranks):.1f} s |"
          for name, total, n, shard, param, ranks in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_results(text, REPO / "bench" / "RESULTS.md")


if __name__ == "__main__":
    main()
