"""megaeeve's stages side by side with the Hugging Face Trainer running the card's recipe, and with a bare loop.

    python bench/bench_vs_trainer.py [--stages 1 3 6] [--steps 6] [--json FILE] [--results bench/RESULTS.md]
    python bench/bench_vs_trainer.py --device cuda [--seq-length 2048 --micro 8] ...   # on GPUs

Three trainers, one run, the same machine, model, data (same samples in the same order), sequence length,
global batch, AdamW (betas 0.9/0.95, eps 1e-8, the same weight decay), warmup + cosine schedule to 10% of the
stage's lr, gradient clipping 1.0 and ds_config family (ds_configs/zero3_cpu.json):

  (M) megaeeve  megaeeve/train.py --stage N, 2 ranks (gloo, ZeRO-3): split embedding and lm_head, frozen rows
                are parameters of their own with no gradient, no fp32 master and no Adam state.
  (P) peer      transformers.Trainer with `deepspeed=` the same ZeRO-3 config (HF's "auto" values), 2 ranks,
                on the plain HF export of the same stage-0. Stages 1-3 run the card's recipe: requires_grad on
                the whole input embedding / lm_head and a gradient hook that zeroes every row but the new
                tokens'; stages 4-7 freeze whole modules. Switches a tuning user turns on: no per-step logging,
                no tqdm, no reporting, no pinned memory on CPU, torch AdamW (no FusedAdam build on CPU).
  (L) limit     a bare PyTorch loop in one process, all cores as threads: megaeeve's split model with the
                stage's trainable set, torch.optim.AdamW(fused=True), the whole global batch in one pass.

Every stage starts each trainer from the same stage-0 (SmolLM2-135M extended by the default run's stage 0,
built here with the default pipeline's own steps less the row fits, or --stage0/--data for another model). Per stage and
trainer: steady-state tokens/s (the first --skip steps dropped, median of --windows windows), peak RSS per
rank (wait4's ru_maxrss of each rank process, from a small wrapper), optimizer-state bytes (every tensor of the ZeRO optimizer checkpoints,
fp32 masters included; for (L) its AdamW state), launch to the end of the first step, and exactness: every
frozen element (frozen tensors and, for the hook, the base and padding rows of a hooked matrix) compared
bitwise with the stage's input after the run, read from the trainer's own output: DeepSpeed's zero_to_fp32
view of (M)'s and (P)'s last checkpoints, (L)'s saved weights. The default weight decay (0.01, on every
trainer's 2-D tensors, embeddings included) is what makes the hook's frozen rows drift: with a zero
gradient Adam's update is 0, but decoupled decay still shrinks the row.

Each trainer's ranks record the token ids they fed the model; the bench checks that (P) and (L) saw exactly
the same samples in the same order and that they match (M)'s per-step batch checksums (metrics.jsonl).

Found on the way: under DeepSpeed on CPU, accelerate (1.16) finds no distributed backend and does not shard
the Trainer's dataloader, so every rank of a plain Trainer run reads the same batches (each rank still does
a full micro batch of work, so its speed is unchanged); the peer's dataset is therefore each rank's own slice.

On GPUs (`--device cuda`): (M) and (P) run one rank per visible GPU over NCCL (--world fewer) with
ds_configs/zero3.json (overlapped communication, fused AdamW) in bf16, (L) on GPU 0 with bf16 autocast over fp32
weights; every clock waits for the GPU (torch.cuda.synchronize) and peak GPU memory (torch.cuda.max_memory_allocated,
rank 0) is reported beside RSS; frozen elements are compared after rounding the fp32 input to bf16, the dtype (M)
and (P) hold it in. Where accelerate shards the Trainer's dataloader (NCCL), the peer reads the whole stream and
accelerate deals each rank its micro batches, in megaeeve's order. `--bf16` runs the bf16 path on CPU (tested
there); the CUDA path has not run yet: no GPU was lent to this project.

Cost: one SmolLM2 stage takes each trainer a model load plus --steps steps of 1,024 tokens. On the idle 2-core
VM all seven stages at --steps 6 took 25 minutes for the three trainers (2-15 s a step; stage 6 the longest,
6 minutes), plus the stage-0 and data the first time; under load it grows fast (stage 1 alone took 50 minutes at
load 13-16): run a subset (`--stages 1 6`) unless the cores are free. Outputs stay in --work
(bench/out/vs-trainer: the default run's stage-0 and data under inputs/, reused by the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from bench.common import processor, rss_wrapped, wrapped_usage, write_results  # noqa: E402
from megaeeve.atomic import write_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

SECTION = "## megaeeve vs the Hugging Face Trainer (card's recipe) and a bare PyTorch loop"
TRAINERS = ("megaeeve", "peer", "limit")
PREP_STEPS = ("corpus", "base", "tokenizer", "stage-0", "data-ko", "data-en")
CHECKSUM_MOD = 2**31 - 1


@dataclass(frozen=True)
class Settings:
    """What every trainer shares (written to WORK/settings.json for the rank programs)."""

    seq_length: int = 128
    micro: int = 2  # samples per rank and micro step ((L): micro * world * accum samples in one pass)
    accum: int = 2
    world: int = 2
    steps: int = 8
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    profile_step: int = 0  # this optimizer step runs under torch.profiler in every trainer (0: none)
    device: str = "cpu"  # "cuda": one rank per visible GPU (NCCL), ds_configs/zero3.json
    bf16: bool = False  # DeepSpeed's bf16 for (M) and (P); autocast over fp32 weights for (L)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def profile_steps(self) -> list[int]:
        """The steps StepProfiler watches (training.profile_steps for megaeeve)."""
        return [self.profile_step] if self.profile_step else []

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    @property
    def tokens_per_step(self) -> int:
        """Predicted positions per optimizer step: what every trainer's tokens/s counts."""
        return self.global_batch * self.seq_length


# -- inputs ------------------------------------------------------------------------------------------------
def prepare_default(out: Path) -> tuple[Path, dict[str, Path]]:
    """SmolLM2-135M's stage-0 and the Korean + English datasets, by the default pipeline's own steps, without the
    row fits (`--fit-input-steps 0 --fit-output-steps 0`): the new rows' values do not change what a training step
    costs, and the fits would take about 20 minutes of the bench's 30 on 2 cores."""
    from megaeeve.pipeline import Pipeline, PipelineConfig

    pipe = Pipeline(PipelineConfig(run_dir=out, fit_input_steps=0, fit_output_steps=0))
    pipe.root.mkdir(parents=True, exist_ok=True)
    for step in pipe.steps():
        if step.name in PREP_STEPS and not step.output.exists():
            print(f"[prepare] {step.name}", flush=True)
            step.run()
    return out / "stage-0", {"ko": out / "data" / "ko", "en": out / "data" / "en"}


def ds_config(s: Settings, hf: bool) -> dict:
    """ds_configs/zero3_cpu.json (zero3.json on GPUs: overlapped communication, fused AdamW) at the bench's batch
    and precision; the peer's copy says "auto" where HF users do."""
    cfg = json.loads((REPO / "ds_configs" / ("zero3.json" if s.cuda else "zero3_cpu.json")).read_text())
    cfg.update(train_micro_batch_size_per_gpu=s.micro, gradient_accumulation_steps=s.accum,
               bf16={"enabled": "auto" if hf else s.bf16})
    if hf:
        cfg.update(gradient_clipping="auto")  # train_batch_size: DeepSpeed derives it (HF's "auto" counts 1 rank here)
        cfg["optimizer"]["params"].update(lr="auto", betas="auto", eps="auto", weight_decay="auto")
    return cfg


def write_run_yaml(work: Path, stage: int, s: Settings, stage0: Path, prefixes: dict[str, Path]) -> Path:
    """A run of one stage from stage-0 (every stage of the bench starts from it); the index cache is shared,
    so the three trainers build the same blend."""
    weights = {"ko": 0.7, "en": 0.3}  # the default pipeline's blend
    run = {
        "run_dir": str(work / "megaeeve" / f"run-{stage}"), "model": str(stage0), "seq_length": s.seq_length,
        "seed": 1234, "run_stages": [stage],
        "data": {"sources": [{"prefix": str(p), "weight": weights.get(n, 1.0), "name": n} for n, p in prefixes.items()],
                 "valid_fraction": 0.05, "new_token_bias": 1.0, "cache_dir": str(work / "index-cache")},
        "training": {"eval_every": 0, "eval_samples": 1, "checkpoint_every": 0, "keep_checkpoints": 1,
                     "log_every": 1, "progress_bar": False,
                     "profile_steps": s.profile_steps},
        "stages": {stage: {"steps": s.steps, "warmup_ratio": s.warmup_ratio, "weight_decay": s.weight_decay,
                           "embedding_weight_decay": s.weight_decay}},
    }
    path = work / f"run-{stage}.yaml"
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    return path


def stage_samples(run_yaml: Path, stage: int, s: Settings):
    """The stage's training blend exactly as megaeeve.train builds it (same seed, same cached index)."""
    from megaeeve.model import read_model_meta
    from megaeeve.training.config import load_run_config
    from megaeeve.training.data import stage_data

    cfg = load_run_config(run_yaml)
    meta = read_model_meta(cfg.model)
    return cfg, stage_data(cfg, cfg.stages[stage], s.steps * s.global_batch, meta.base_vocab_size).train


# -- rank programs (run as `bench_vs_trainer.py peer|limit ...` in processes of their own) --------------------
def peer_main(work: Path, stage: int) -> None:
    """One rank of the peer: what a Trainer user writes for the card's recipe."""
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from megaeeve.model import read_model_meta
    from megaeeve.training.profiling import StepProfiler

    s = Settings(**json.loads((work / "settings.json").read_text()))
    cfg, samples = stage_samples(work / f"run-{stage}.yaml", stage, s)
    st, meta = cfg.stages[stage], read_model_meta(cfg.model)
    out = work / "peer" / f"stage-{stage}"
    rank = int(os.environ["RANK"])

    args = TrainingArguments(  # before from_pretrained: HF then builds the model under zero.Init
        output_dir=str(out), deepspeed=ds_config(s, hf=True), max_steps=s.steps, bf16=s.bf16,
        per_device_train_batch_size=s.micro, gradient_accumulation_steps=s.accum,
        learning_rate=st.lr, weight_decay=s.weight_decay, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        max_grad_norm=1.0, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": st.min_lr_ratio},
        warmup_steps=round(st.warmup_ratio * s.steps), save_strategy="steps", save_steps=s.steps,
        logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=s.cuda,
        remove_unused_columns=False, seed=cfg.seed + stage,
        use_cpu=s.bf16 and not s.cuda)  # what HF asks of bf16 on CPU (else "Your setup doesn't support bf16/gpu")
    shards = args.world_size > 1  # accelerate hands rank r micro batches r, r + world, ... of the dataset

    class Samples(torch.utils.data.Dataset):
        """The blend in megaeeve's order: rank r's micro batch q is stream samples [(q * world + r) * micro,
        ... + micro). Where accelerate shards the dataloader (NCCL on GPUs) that is the whole stream; under
        DeepSpeed on CPU accelerate 1.16 finds no distributed backend (its state is NO, one process) and would
        hand every rank the same batches, so there each rank reads its own share."""

        def __len__(self) -> int:
            return len(samples) if shards else len(samples) // s.world

        def __getitem__(self, i: int) -> dict:
            q, j = divmod(i, s.micro)
            k = i if shards else (q * s.world + rank) * s.micro + j
            t = torch.from_numpy(samples[k][1].astype(np.int64))
            return {"input_ids": t, "labels": t}  # HF shifts the labels: seq_length predicted positions

    class InOrder(Trainer):
        """The blend's order instead of a random permutation, so that every trainer sees the same samples."""

        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    class Clock(TrainerCallback):
        """Each optimizer step's end time; the profiled step (Settings.profile_step) under torch.profiler, from
        before its first micro batch's forward to after the optimizer step, as megaeeve's StepProfiler."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.profiler = StepProfiler(s.profile_steps, out / "profile", rank)

        def on_step_begin(self, args, state, control, **kwargs):
            self.profiler.begin(state.global_step + 1)

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(s)
            self.times.append(time.time())
            self.profiler.end(state.global_step)
    model = AutoModelForCausalLM.from_pretrained(str(work / "stage0-hf"), dtype=torch.float32)
    freeze_peer(model, st.trainable, meta.base_vocab_size, meta.num_added)
    seen: list[np.ndarray] = []

    def record(module, a, kw):
        if module.training:
            seen.append(kw["input_ids"].cpu().numpy())

    model.register_forward_pre_hook(record, with_kwargs=True)
    clock = Clock()
    trainer = InOrder(model=model, args=args, train_dataset=Samples(), callbacks=[clock])
    trainer.train()
    np.save(out / f"tokens-rank{rank}.npy", np.stack(seen))
    write_json(out / f"clock-rank{rank}.json", {"times": clock.times, "peak_gpu_mib": peak_gpu_mib(s),
                                                "accelerate_shards_data": shards,
                                                "dtype": str(next(trainer.model_wrapped.parameters()).dtype)})


def synchronize(s: Settings) -> None:
    """Wait for the GPU's queued work, so that a step's clock stops when its kernels are done."""
    if s.cuda:
        torch.cuda.synchronize()


def peak_gpu_mib(s: Settings) -> float | None:
    """This process's peak GPU memory allocated by torch (MiB), as megaeeve's metrics count it; None on CPU."""
    from megaeeve.training.throughput import peak_memory_gib

    return peak_memory_gib(torch.device("cuda")) * 1024 if s.cuda else None


def freeze_peer(model: torch.nn.Module, trainable: tuple[str, ...], base: int, added: int) -> None:
    """The card's recipe on a plain HF model: a matrix with any trainable rows trains whole (requires_grad),
    and a hook zeroes the gradient of every row its stage does not train; whole modules freeze otherwise."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    sides = {id(embed): "input", id(head): "output"}
    for p in model.parameters():
        side = sides.get(id(p))
        rows = {r for r in trainable if side and r.startswith(side)}
        p.requires_grad_(bool(rows) if side else "body" in trainable)
        if rows == {f"{side}_added"}:
            p.register_hook(lambda g: _keep_rows(g, base, base + added))


def _keep_rows(grad: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    grad = grad.clone()
    grad[:start] = 0
    grad[stop:] = 0
    return grad


def limit_main(work: Path, stage: int) -> None:
    """The limit: a bare loop over megaeeve's split model with the stage's trainable set, one process."""
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from torch.optim.lr_scheduler import LambdaLR

    from megaeeve.model import load_model_dir, parameter_roles
    from megaeeve.training.engine import freeze_for_stage, param_groups, warmup_cosine
    from megaeeve.training.profiling import StepProfiler

    torch.set_num_threads(os.cpu_count() or 1)
    s = Settings(**json.loads((work / "settings.json").read_text()))
    cfg, samples = stage_samples(work / f"run-{stage}.yaml", stage, s)
    st = cfg.stages[stage]
    out = work / "limit" / f"stage-{stage}"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + stage)
    device = torch.device(s.device)
    model = load_model_dir(cfg.model).to(device).train()
    roles = parameter_roles(model)
    freeze_for_stage(model, roles, st)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, roles, st)]
    opt = torch.optim.AdamW(groups, lr=st.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    sched = LambdaLR(opt, warmup_cosine(s.steps, round(st.warmup_ratio * s.steps), st.min_lr_ratio))
    params = [p for g in groups for p in g["params"]]
    seen, times = [], []
    profiler = StepProfiler(s.profile_steps, out / "profile", 0)
    for step in range(s.steps):
        profiler.begin(step + 1)
        tokens = torch.from_numpy(np.stack([samples[i][1] for i in range(step * s.global_batch,
                                                                          (step + 1) * s.global_batch)]).astype(np.int64))
        batch = tokens.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        synchronize(s)
        times.append(time.time())
        profiler.end(step + 1)
        seen.append(tokens.numpy())
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
    state_bytes = sum(t.numel() * t.element_size() for st_ in opt.state.values() for t in st_.values()
                      if torch.is_tensor(t))
    np.save(out / "tokens.npy", np.concatenate(seen))
    (out / "clock.json").write_text(json.dumps({"times": times, "optimizer_bytes": state_bytes,
                                                "peak_gpu_mib": peak_gpu_mib(s)}))


# -- launching -----------------------------------------------------------------------------------------------
def launch(cmd: list[str], world: int, log: Path, threads: int = 1,
           device: str = "cpu") -> tuple[list[int], list[float], float]:
    """Start `world` ranks of `cmd` with torch.distributed's env vars (as torchrun would; rank r on GPU r where
    `device` is cuda) and wait for them;
    returns exit codes, peak RSS (MiB) of each rank (bench.common.rss_wrapped: a child of this process would
    report at least this process's own RSS) and the launch time."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    started = time.time()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": device,
               "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        out = open(f"{log}.rank{rank}", "w")
        procs.append(subprocess.Popen(rss_wrapped(cmd, Path(f"{log}.rank{rank}.usage.json")), env=env, cwd=REPO,
                                      stdout=out, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    rss = [wrapped_usage(Path(f"{log}.rank{rank}.usage.json"), cmd, Path(f"{log}.rank{rank}").read_text())["rss_kb"]
           / 1024 for rank in range(world)]
    return codes, rss, started


def run_trainer(name: str, work: Path, stage: int, s: Settings) -> dict:
    """Run one trainer on one stage; its raw record (times, peak RSS, launch time)."""
    log = work / "logs" / f"{name}-{stage}"
    log.parent.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    cores = os.cpu_count() or 1
    rank_threads = cores // s.world if s.cuda else 1  # on CPU each rank computes on one core of its own
    if name == "megaeeve":
        ds = work / "ds-megaeeve.json"
        ds.write_text(json.dumps(ds_config(s, hf=False)))
        cmd = [sys.executable, "-m", "megaeeve.train", "--ds_config", str(ds), "--config",
               str(work / f"run-{stage}.yaml"), "--stage", str(stage), "--overwrite"]
        codes, rss, started = launch(cmd, s.world, log, rank_threads, s.device)
    elif name == "peer":
        codes, rss, started = launch([*me, "peer", "--work", str(work), "--stage", str(stage)], s.world, log,
                                     rank_threads, s.device)
    else:
        codes, rss, started = launch([*me, "limit", "--work", str(work), "--stage", str(stage)], 1, log, cores,
                                     s.device)
    if any(codes):
        tail = "\n".join(Path(f"{log}.rank{r}").read_text()[-3000:] for r in range(len(codes)))
        sys.exit(f"{name} stage {stage} failed with exit codes {codes}:\n{tail}")
    return {"rss": rss, "started": started}


# -- measuring -----------------------------------------------------------------------------------------------
def unprofiled(step_times: list[float], first_step: int, leave_out: int) -> list[float]:
    """The times of steps first_step, first_step + 1, ... without step `leave_out` (the profiled one, which the
    profiler slows); all of them if that would leave none."""
    return [t for i, t in enumerate(step_times, first_step) if i != leave_out] or step_times


def steady_tokens_per_s(step_times: list[float], tokens_per_step: int, skip: int, windows: int,
                        leave_out: int = 0) -> float:
    """Median over `windows` contiguous windows of the steps after the first `skip` (at least one step), step
    `leave_out` (the profiled one) left out. `step_times` start at step 2: step 1 is part of the launch-to-first-step
    time."""
    first = min(max(skip - 1, 0), len(step_times) - 1)
    rest = unprofiled(step_times[first:], first + 2, leave_out)
    chunks = [c for c in np.array_split(np.array(rest), min(windows, len(rest))) if len(c)]
    return statistics.median(tokens_per_step * len(c) / float(c.sum()) for c in chunks)


def step_checksums(stream: np.ndarray, s: Settings) -> list[int]:
    """megaeeve's per-step batch checksum (training/loop.py) of a global sample stream [steps * batch, seq + 1]:
    each rank chains its micro batches' position-weighted sums, and the ranks' values are summed."""
    weights = np.arange(1, stream.shape[1] + 1, dtype=np.int64)
    out = []
    for step in range(len(stream) // s.global_batch):
        total = 0
        for rank in range(s.world):
            c = 0
            for a in range(s.accum):
                start = step * s.global_batch + a * s.micro * s.world + rank * s.micro
                c = (c * 1_000_003 + int((stream[start:start + s.micro].astype(np.int64) * weights).sum())) % CHECKSUM_MOD
            total += c
        out.append(total)
    return out


def peer_stream(out: Path, s: Settings) -> np.ndarray:
    """The peer's ranks' recorded micro batches back in global stream order (micro step by micro step)."""
    per_rank = [np.load(out / f"tokens-rank{r}.npy") for r in range(s.world)]  # [micro steps, micro, seq + 1]
    return np.concatenate([np.concatenate([ranks[q] for ranks in per_rank]) for q in range(len(per_rank[0]))])


def optimizer_bytes(ckpt: Path) -> int:
    """Bytes of every tensor in a DeepSpeed checkpoint's optimizer files (all ranks): Adam moments and the
    fp32 partitions ZeRO keeps."""
    tag = (ckpt / "latest").read_text().strip() if (ckpt / "latest").is_file() else ""
    files = sorted((ckpt / tag).glob("*optim_states.pt"))

    def size(x: Any) -> int:
        if torch.is_tensor(x):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(size(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(size(v) for v in x)
        return 0

    return sum(size(torch.load(f, map_location="cpu", weights_only=False)) for f in files)


def frozen_moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                 frozen_rows: dict[str, slice | None], held: torch.dtype = torch.float32) -> tuple[int, int, float]:
    """(elements compared, elements that differ bitwise, largest |change|) over the frozen part of each tensor:
    `frozen_rows[name]` None means the whole tensor, a slice the trainable rows (everything else is frozen).
    `held`: the dtype the trainer holds its weights in (bf16 under DeepSpeed's bf16), which the stage's fp32
    input is rounded to first: that rounding is the load's, not a move."""
    total = moved = 0
    drift = 0.0
    for name, rows in frozen_rows.items():
        a, b = before[name].detach().to(held).float(), after[name].detach().float()
        mask = torch.ones(a.shape[0], dtype=torch.bool)
        if rows is not None:
            mask[rows] = False
        diff = (a[mask] != b[mask])
        total += int(mask.sum()) * (a[0].numel() if a.dim() else 1)
        moved += int(diff.sum())
        if diff.any():
            drift = max(drift, float((a[mask] - b[mask]).abs().max()))
    return total, moved, drift


def measure(work: Path, stage: int, s: Settings, raw: dict[str, dict], skip: int, windows: int) -> dict[str, dict]:
    """Per trainer: tokens/s, peak RSS, optimizer bytes, launch to first step, exactness; checks the data."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from megaeeve.model import read_model_meta
    from megaeeve.model.weights import load_weights
    from megaeeve.stages import trainable_names
    from megaeeve.training.config import load_run_config

    cfg = load_run_config(work / f"run-{stage}.yaml")
    st, meta = cfg.stages[stage], read_model_meta(cfg.model)
    res: dict[str, dict] = {}
    held = torch.bfloat16 if s.bf16 else torch.float32  # (M)'s and (P)'s weights; (L) keeps fp32 under autocast

    # (M): metrics.jsonl and DeepSpeed's view of its checkpoint
    stage_dir = cfg.stage_dir(stage)
    train = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    split_before = load_weights(cfg.model)
    roles = _split_roles(cfg.model)
    keep = set(trainable_names(roles, st))
    frozen = {n: None for n in roles if n not in keep}
    view = get_fp32_state_dict_from_zero_checkpoint(str(stage_dir / "checkpoints"))
    n, moved, drift = frozen_moved(split_before, view, frozen, held)
    gpu = max(r["peak_memory_gib"] for r in train) * 1024 if s.cuda else None  # rank 0's torch peak on a GPU
    res["megaeeve"] = _record(s, [r["step_time_s"] for r in train][1:], train[0]["time"] - raw["megaeeve"]["started"],
                              raw["megaeeve"]["rss"], gpu, optimizer_bytes(stage_dir / "checkpoints"), n, moved, drift,
                              skip, windows)
    m_checksums = [r["batch_checksum"] for r in train]

    # (P): its clock, its recorded batches, DeepSpeed's view of the Trainer's checkpoint
    out = work / "peer" / f"stage-{stage}"
    clock = json.loads((out / "clock-rank0.json").read_text())
    times = clock["times"]
    p_stream = peer_stream(out, s)
    ckpt = out / f"checkpoint-{s.steps}"
    view = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    hf_before = {k: v for f in sorted((work / "stage0-hf").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    rows = slice(meta.base_vocab_size, meta.base_vocab_size + meta.num_added)
    embed, head = f"{meta.input_embedding}.weight", f"{meta.output_embedding}.weight"
    hooked = {embed: "input", head: "output"}
    p_frozen = {}
    for name in hf_before:
        side = hooked.get(name)
        trained = {r for r in st.trainable if side and r.startswith(side)} if side else {"body"} & set(st.trainable)
        if not trained:
            p_frozen[name] = None
        elif trained == {f"{side}_added"}:
            p_frozen[name] = rows
    n, moved, drift = frozen_moved(hf_before, view, p_frozen, held)
    res["peer"] = _record(s, list(np.diff([raw["peer"]["started"], *times]))[1:], times[0] - raw["peer"]["started"],
                          raw["peer"]["rss"], clock["peak_gpu_mib"], optimizer_bytes(ckpt),
                          n, moved, drift, skip, windows)

    # (L): its clock, batches and saved weights
    out = work / "limit" / f"stage-{stage}"
    clock = json.loads((out / "clock.json").read_text())
    l_stream = np.load(out / "tokens.npy")
    n, moved, drift = frozen_moved(split_before, load_file(str(out / "weights.safetensors")), frozen)
    res["limit"] = _record(s, list(np.diff([raw["limit"]["started"], *clock["times"]]))[1:],
                           clock["times"][0] - raw["limit"]["started"], raw["limit"]["rss"], clock["peak_gpu_mib"],
                           clock["optimizer_bytes"], n, moved, drift, skip, windows)

    if s.profile_step:  # rank 0's profiled step of each trainer; step_times_s start at step 2
        dirs = {"megaeeve": stage_dir, **{name: work / name / f"stage-{stage}" for name in ("peer", "limit")}}
        for name, d in dirs.items():
            res[name]["profile"] = profile_split(d / "profile" / f"rank0-step{s.profile_step}.ops.json",
                                                 res[name]["step_times_s"][s.profile_step - 2], s.cuda)

    same = p_stream.shape == l_stream.shape and np.array_equal(p_stream, l_stream)
    if not same or step_checksums(l_stream, s) != m_checksums:
        sys.exit(f"stage {stage}: the trainers did not see the same samples (peer == limit: {same}; megaeeve's "
                 f"checksums {m_checksums} vs {step_checksums(l_stream, s)})")
    return res


PROFILE_KINDS = ("matmul", "attention", "collectives", "optimizer", "copies", "other ops")


def profile_kind(name: str) -> str:
    """The part of a step an operator of torch.profiler's summary belongs to."""
    low = name.lower()
    if any(k in low for k in ("c10d", "gloo", "nccl", "all_gather", "reduce_scatter", "all_reduce", "broadcast")):
        return "collectives"
    if any(k in low for k in ("adam", "_foreach", "optimizer")):
        return "optimizer"
    if "attention" in low:
        return "attention"
    if low.startswith("aten::") and ("mm" in low[6:] or "linear" in low):
        return "matmul"
    if low in ("aten::copy_", "aten::cat", "aten::_to_copy", "aten::clone", "aten::index_select", "aten::embedding",
               "aten::embedding_dense_backward", "aten::index_add_", "aten::narrow_copy", "aten::fill_", "aten::zero_"):
        return "copies"
    return "other ops"


def profile_split(ops_file: Path, wall_s: float, device: bool = False) -> dict:
    """Rank 0's profiled step by PROFILE_KINDS (operators' self CPU seconds; with `device`, their self GPU
    seconds), plus the step's wall time and what no operator accounts for (Python, the data, waiting; on a GPU,
    the time it sat idle); its five slowest operators by name."""
    key = "self_device_s" if device else "self_cpu_s"
    ops = sorted(json.loads(ops_file.read_text()), key=lambda o: -o.get(key, 0.0))
    split = {k: 0.0 for k in PROFILE_KINDS}
    for o in ops:
        split[profile_kind(o["name"])] += o.get(key, 0.0)
    return {"wall_s": wall_s, **split, "outside ops": wall_s - sum(split.values()),
            "top": [(o["name"], round(o.get(key, 0.0), 4)) for o in ops[:5]]}


def _split_roles(model_dir: Path) -> dict[str, str]:
    from transformers import AutoConfig

    from megaeeve.model import parameter_roles, read_model_meta
    from megaeeve.model.checkpoint import build_split_model

    with torch.device("meta"):
        model = build_split_model(AutoConfig.from_pretrained(str(model_dir)), read_model_meta(model_dir), torch.float32)
    return parameter_roles(model)


def _record(s: Settings, step_times: list[float], first_step_s: float, rss: list[float], gpu_mib: float | None,
            opt_bytes: int, frozen: int, moved: int, drift: float, skip: int, windows: int) -> dict:
    return {"tokens_per_s": steady_tokens_per_s(step_times, s.tokens_per_step, skip, windows, s.profile_step),
            "fastest_step_tokens_per_s": s.tokens_per_step / min(unprofiled(step_times, 2, s.profile_step)),
            "peak_rss_mib": max(rss), "rss_per_rank_mib": rss, "peak_gpu_mib": gpu_mib, "optimizer_bytes": opt_bytes,
            "launch_to_first_step_s": first_step_s, "frozen_elements": frozen, "frozen_elements_moved": moved,
            "max_frozen_drift": drift, "step_times_s": step_times}


def ratios(per: dict[str, dict]) -> dict[str, float]:
    """(M)/(P) and (M)/(L) of one stage, from the same run."""
    m, pe, li = per["megaeeve"], per["peer"], per["limit"]
    return {"m_over_p": m["tokens_per_s"] / pe["tokens_per_s"], "m_over_l": m["tokens_per_s"] / li["tokens_per_s"],
            "fastest_m_over_p": m["fastest_step_tokens_per_s"] / pe["fastest_step_tokens_per_s"],
            "fastest_m_over_l": m["fastest_step_tokens_per_s"] / li["fastest_step_tokens_per_s"],
            "rss_m_over_p": m["peak_rss_mib"] / pe["peak_rss_mib"],
            **({"gpu_m_over_p": m["peak_gpu_mib"] / pe["peak_gpu_mib"]} if m.get("peak_gpu_mib") else {}),
            "opt_m_over_p": m["optimizer_bytes"] / max(1, pe["optimizer_bytes"])}


# -- report --------------------------------------------------------------------------------------------------
def table(results: dict[str, dict], s: Settings, label: str) -> str:
    gpu = " peak GPU memory, rank 0 (MiB) |" if s.cuda else ""
    lines = [SECTION, "", label, "",
             f"| stage | trainer | tokens/s | fastest step (tokens/s) | peak RSS / rank (MiB) |{gpu} optimizer state "
             "(MiB) | launch to step 1 (s) | frozen elements moved (max drift) |",
             "|---|---|---|---|---|---|---|---|" + "---|" * bool(gpu)]
    for stage, per in results.items():
        for name in TRAINERS:
            r = per[name]
            moved = f"{r['frozen_elements_moved']:,} of {r['frozen_elements']:,}"
            if r["frozen_elements_moved"]:
                moved += f" ({r['max_frozen_drift']:.2e})"
            lines.append(f"| {stage} | {name} | {r['tokens_per_s']:,.1f} | {r['fastest_step_tokens_per_s']:,.1f} | "
                         f"{r['peak_rss_mib']:,.0f} | " + (f"{r['peak_gpu_mib']:,.0f} | " if gpu else "")
                         + f"{r['optimizer_bytes'] / 2**20:,.1f} | {r['launch_to_first_step_s']:.1f} | {moved} |")
    lines += ["", "| stage | (M)/(P) tokens/s | (M)/(L) tokens/s | fastest steps (M)/(P), (M)/(L) | (M)/(P) peak RSS "
              f"|{' (M)/(P) peak GPU memory |' if gpu else ''} (M)/(P) optimizer bytes |",
              "|---|---|---|---|---|---|" + "---|" * bool(gpu)]
    for stage, per in results.items():
        r = per["ratios"]
        lines.append(f"| {stage} | {r['m_over_p']:.2f}x | {r['m_over_l']:.2f}x | {r['fastest_m_over_p']:.2f}x, "
                     f"{r['fastest_m_over_l']:.2f}x | {r['rss_m_over_p']:.2f}x | "
                     + (f"{r['gpu_m_over_p']:.2f}x | " if gpu else "") + f"{r['opt_m_over_p']:.3f}x |")
    if s.profile_step:
        lines += ["", f"Where step {s.profile_step} goes (rank 0 under torch.profiler, seconds: operators' self "
                  f"{'GPU' if s.cuda else 'CPU'} time by kind; outside ops = the step's wall time less all of them):", "",
                  "| stage | trainer | step wall | " + " | ".join(PROFILE_KINDS) + " | outside ops | slowest operators |",
                  "|---|---|---" + "|---" * (len(PROFILE_KINDS) + 2) + "|"]
        for stage, per in results.items():
            for name in TRAINERS:
                pr = per[name]["profile"]
                top = ", ".join(f"{n} {t:.2f}" for n, t in pr["top"][:3])
                lines.append(f"| {stage} | {name} | {pr['wall_s']:.2f} | "
                             + " | ".join(f"{pr[k]:.2f}" for k in PROFILE_KINDS) + f" | {pr['outside ops']:.2f} | {top} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    load = os.getloadavg()
    gpus = torch.cuda.device_count()
    return ((f"{gpus}x {torch.cuda.get_device_name(0)}, " if gpus else "") + f"{os.cpu_count()} CPU cores ({processor()}), Python "
            f"{platform.python_version()}, torch {torch.__version__}; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["peer"], ["limit"]):  # the rank programs the bench launches
        r = argparse.ArgumentParser(prog=f"bench_vs_trainer.py {argv[0]}")
        r.add_argument("--work", type=Path, required=True)
        r.add_argument("--stage", type=int, required=True)
        ra = r.parse_args(argv[1:])
        (peer_main if argv[0] == "peer" else limit_main)(ra.work, ra.stage)
        from megaeeve.training.collectives import exit_rank

        exit_rank(0)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--stages", type=int, nargs="+", default=list(range(1, 8)), choices=range(1, 8))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of tokens/s")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro", type=int, default=Settings.micro, help="samples per rank and micro step")
    p.add_argument("--accum", type=int, default=Settings.accum, help="micro steps per optimizer step")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--profile", type=int, default=0, metavar="STEP",
                   help="run optimizer step STEP (>= 2) of every trainer under torch.profiler and tabulate where it "
                        "goes (tokens/s then leaves that step out)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: (M) and (P) one rank per visible GPU over NCCL with ds_configs/zero3.json, (L) on GPU 0; "
                        "peak GPU memory beside RSS")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="DeepSpeed's bf16 for (M) and (P), autocast for (L) (default: on with --device cuda, off on CPU)")
    p.add_argument("--world", type=int, help="ranks of (M) and (P) (default: 2 on CPU, every visible GPU with --device cuda)")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "vs-trainer")
    p.add_argument("--stage0", type=Path, help="a stage-0 directory (default: SmolLM2-135M by the default pipeline)")
    p.add_argument("--data", nargs="+", metavar="NAME=PREFIX", help="with --stage0: its datasets (ko, en weigh 0.7/0.3)")
    p.add_argument("--json", type=Path)
    p.add_argument("--fresh", action="store_true",
                   help="measure every stage again (default: a stage already measured in --work at the same settings is "
                        "reused, so an interrupted run resumes at the next stage)")
    p.add_argument("--results", default="", help="replace this section of that RESULTS.md (default: write none)")
    args = p.parse_args(argv)
    if bool(args.stage0) != bool(args.data):
        p.error("--stage0 and --data go together")
    if args.profile and not 2 <= args.profile <= args.steps:
        p.error(f"--profile {args.profile}: a step from 2 (step 1 is counted as launch) to --steps ({args.steps})")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and not gpus:
        p.error(f"--device cuda: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")
    world = args.world or gpus or 2
    if gpus and world > gpus:
        p.error(f"--world {world}: {gpus} GPU(s) visible, and NCCL runs one rank per GPU")
    s = Settings(seq_length=args.seq_length, micro=args.micro, accum=args.accum, steps=args.steps,
                 weight_decay=args.weight_decay,
                 profile_step=args.profile, world=world, device=args.device,
                 bf16=args.device == "cuda" if args.bf16 is None else args.bf16)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.stage0:
        stage0, prefixes = args.stage0.resolve(), {k: Path(v).resolve() for k, v in (d.split("=", 1) for d in args.data)}
    else:
        stage0, prefixes = prepare_default(work / "inputs")
    (work / "settings.json").write_text(json.dumps(asdict(s)))
    if not (work / "stage0-hf").is_dir():
        from megaeeve.model import export_hf

        export_hf(stage0, work / "stage0-hf")
    results: dict[str, dict] = {}
    for stage in sorted(set(args.stages)):
        done = work / "measured" / f"stage-{stage}.json"  # a stage measured by an earlier, interrupted run
        key = {"settings": asdict(s), "stage0": str(stage0), "skip": args.skip, "windows": args.windows}
        earlier = json.loads(done.read_text()) if done.is_file() and not args.fresh else {}
        if earlier.get("key") == key:
            print(f"stage {stage}: measured by an earlier run at these settings ({done}; --fresh measures again)",
                  flush=True)
            results[str(stage)] = earlier["result"]
            continue
        run_yaml = write_run_yaml(work, stage, s, stage0, prefixes)
        stage_samples(run_yaml, stage, s)  # build the index cache once, outside every trainer's clock
        raw = {}
        for name in TRAINERS:
            print(f"stage {stage}: {name}", flush=True)
            raw[name] = run_trainer(name, work, stage, s)
        per = measure(work, stage, s, raw, args.skip, args.windows)
        per["ratios"] = ratios(per)
        results[str(stage)] = per
        write_json(done, {"key": key, "machine": machine(), "result": per})
        print(json.dumps({k: {x: v[x] for x in ("tokens_per_s", "peak_rss_mib", "optimizer_bytes",
                                                 "frozen_elements_moved")} if k != "ratios" else v
                          for k, v in per.items()}), flush=True)
    label = (f"Machine: {machine()}. `python bench/bench_vs_trainer.py --stages {' '.join(map(str, args.stages))} "
             f"--steps {s.steps}{f' --profile {s.profile_step}' if s.profile_step else ''}"
             f"{' --device cuda' if s.cuda else ''}{' --bf16' if s.bf16 and not s.cuda else ''}`: "
             + (f"{s.world} NCCL ranks (one GPU each)" if s.cuda else f"{s.world} gloo ranks (one thread each)")
             + f" for (M) and (P), one process for (L); {'bf16' if s.bf16 else 'fp32'}, "
             f"seq {s.seq_length}, micro batch {s.micro} x {s.accum} accumulation steps, global batch {s.global_batch} samples ({s.tokens_per_step:,} tokens a step), "
             f"weight decay {s.weight_decay:g}; tokens/s is the median of {args.windows} windows over steps "
             f"{args.skip + 1}..{s.steps}.")
    text = table(results, s, label)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"settings": asdict(s), "stages": results}, indent=1))
    if args.results:
        write_results(text, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
