"""bench/bench_vs_trainer.py on a tiny random Llama: the three trainers (megaeeve, HF Trainer + ZeRO-3 with the
card's gradient hook, a bare loop) see the same samples in the same order, and the exactness column is what
each trainer's own output says (DeepSpeed's zero_to_fp32 view of the ZeRO checkpoints, the loop's weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import REPO, engine_view, make_stage0, metrics, write_prefix
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from megaeeve import assets
from megaeeve.model.weights import load_weights

sys.path.insert(0, str(REPO / "bench"))
import bench_vs_trainer as bench  # noqa: E402


def run_bench(tmp_path: Path, tokenizer_dir: Path, *flags: str) -> tuple[Path, Path, list[str], dict]:
    """Stage 1 of the bench, 2 steps, on a tiny random Llama stage-0: (stage-0, work dir, command, its JSON)."""
    model = make_stage0(tmp_path, "llama", tokenizer_dir)
    ko, _ = assets.split_held_out(assets.korean_documents())
    ko_prefix = write_prefix(tmp_path / "ko", model, ko[:200])
    en_prefix = write_prefix(tmp_path / "en", model, assets.english_documents()[:60])
    work, out = tmp_path / "work", tmp_path / "result.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_vs_trainer.py"), "--stage0", str(model), "--data",
           f"ko={ko_prefix}", f"en={en_prefix}", "--stages", "1", "--steps", "2", "--skip", "0", "--windows", "1",
           "--seq-length", "32", "--weight-decay", "0.1", *flags, "--work", str(work), "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in bench.TRAINERS:
        per = result["stages"]["1"][name]
        assert set(per) >= {"tokens_per_s", "peak_rss_mib", "optimizer_bytes", "frozen_elements_moved"}
        assert per["tokens_per_s"] > 0 and per["peak_rss_mib"] > 0
    return model, work, cmd, result


def same_samples(work: Path, s: bench.Settings) -> None:
    """What the peer's ranks and the loop fed their models is the blend itself, in its order, and matches
    megaeeve's own per-step batch checksums."""
    _, samples = bench.stage_samples(work / "run-1.yaml", 1, s)
    blend = np.stack([samples[i][1] for i in range(s.steps * s.global_batch)]).astype(np.int64)
    peer = bench.peer_stream(work / "peer" / "stage-1", s)
    limit = np.load(work / "limit" / "stage-1" / "tokens.npy")
    assert np.array_equal(peer, blend) and np.array_equal(limit, blend)
    logged = [r["batch_checksum"] for r in metrics(work / "megaeeve" / "run-1" / "stage-1") if r["kind"] == "train"]
    assert logged == bench.step_checksums(blend, s)
    assert bench.step_checksums(blend[::-1], s) != logged  # the checksum sees the order


def peer_clocks(work: Path, s: bench.Settings) -> list[dict]:
    """What each peer rank recorded besides its batches: step times, peak GPU memory, its data path and dtype."""
    return [json.loads((work / "peer" / "stage-1" / f"clock-rank{r}.json").read_text()) for r in range(s.world)]


def hook_rows_moved(before: torch.Tensor, after: torch.Tensor, base: int, added: int) -> torch.Tensor:
    """Which elements of the rows the hook keeps at zero gradient (base and padding rows) differ."""
    return torch.cat([after[:base], after[base + added:]]) != torch.cat([before[:base], before[base + added:]])


def test_three_trainers_same_data_and_exactness_from_their_outputs(tmp_path, gpt2_tokenizer_dir):
    model, work, cmd, result = run_bench(tmp_path, gpt2_tokenizer_dir, "--profile", "2")
    s = bench.Settings(**result["settings"])
    per = result["stages"]["1"]
    assert not s.bf16 and all(per[name]["peak_gpu_mib"] is None for name in bench.TRAINERS)
    peer_ranks = peer_clocks(work, s)
    assert [r["accelerate_shards_data"] for r in peer_ranks] == [False, False]  # each rank reads its own share
    assert {r["dtype"] for r in peer_ranks} == {"torch.float32"}
    same_samples(work, s)

    # Exactness from each trainer's own output, recounted here.
    meta = json.loads((model / "megaeeve_model.json").read_text())
    base, added = meta["base_vocab_size"], meta["num_added"]
    before = load_weights(model)
    view = engine_view(work / "megaeeve" / "run-1", 1)
    assert all(torch.equal(view[n], before[n]) for n in before if n != "model.embed_tokens.added")
    assert not torch.equal(view["model.embed_tokens.added"], before["model.embed_tokens.added"])
    assert per["megaeeve"]["frozen_elements_moved"] == 0
    assert per["megaeeve"]["optimizer_bytes"] >= 12 * added * meta["hidden_size"]  # moments + fp32 master, new rows

    hf_before = load_file(str(work / "stage0-hf" / "model.safetensors"))
    hf_view = get_fp32_state_dict_from_zero_checkpoint(str(work / "peer" / "stage-1" / f"checkpoint-{s.steps}"))
    emb, emb0 = hf_view["model.embed_tokens.weight"], hf_before["model.embed_tokens.weight"]
    hook_rows = hook_rows_moved(emb0, emb, base, added)
    assert not torch.equal(emb[base:base + added], emb0[base:base + added])
    assert all(torch.equal(hf_view[n], hf_before[n]) for n in hf_before if n != "model.embed_tokens.weight")
    # Weight decay moves the rows the hook keeps at zero gradient: the column shows it, as counted here.
    assert per["peer"]["frozen_elements_moved"] == int(hook_rows.sum()) > 0
    assert per["peer"]["optimizer_bytes"] > per["megaeeve"]["optimizer_bytes"]

    after = load_file(str(work / "limit" / "stage-1" / "weights.safetensors"))
    assert all(torch.equal(after[n], before[n]) for n in before if n != "model.embed_tokens.added")
    assert per["limit"]["frozen_elements_moved"] == 0

    # --profile 2: step 2 of every trainer under torch.profiler, split by kind from each one's own ops.json.
    for name in bench.TRAINERS:
        pr = per[name]["profile"]
        assert pr["wall_s"] == per[name]["step_times_s"][0] > 0 and pr["matmul"] > 0 and pr["optimizer"] > 0
        assert pr["outside ops"] == pytest.approx(pr["wall_s"] - sum(pr[k] for k in bench.PROFILE_KINDS))
    assert per["megaeeve"]["profile"]["collectives"] > 0 and per["peer"]["profile"]["collectives"] > 0
    assert per["limit"]["profile"]["collectives"] == 0  # one process: nothing to gather
    assert (work / "megaeeve" / "run-1" / "stage-1" / "profile" / "rank1-step2.trace.json").is_file()

    # A rerun at the same settings reuses the measured stage instead of training again; --fresh would not.
    again = subprocess.run([*cmd[:-1], str(tmp_path / "again.json")], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "measured by an earlier run" in again.stdout, again.stderr[-2000:]
    assert json.loads((tmp_path / "again.json").read_text())["stages"] == result["stages"]


def test_bf16_compares_frozen_elements_in_the_dtype_the_trainers_hold(tmp_path, gpt2_tokenizer_dir):
    """--bf16, the precision of the bench's GPU runs, on CPU: (M) and (P) hold bf16 weights under DeepSpeed, so
    the stage's fp32 input is rounded to bf16 before the bitwise comparison (the load's rounding is no move);
    (L) keeps fp32 weights under autocast. The data is the same as in fp32."""
    model, work, _, result = run_bench(tmp_path, gpt2_tokenizer_dir, "--bf16")
    s = bench.Settings(**result["settings"])
    per = result["stages"]["1"]
    assert s.bf16 and not s.cuda
    same_samples(work, s)
    peer_ranks = peer_clocks(work, s)
    # use_cpu (HF's condition for bf16 on CPU) gives accelerate a gloo group, so it deals the micro batches, as
    # it does over NCCL on GPUs: the stream is the same either way.
    assert [r["accelerate_shards_data"] for r in peer_ranks] == [True, True]
    assert {r["dtype"] for r in peer_ranks} == {"torch.bfloat16"}
    meta = json.loads((model / "megaeeve_model.json").read_text())
    base, added = meta["base_vocab_size"], meta["num_added"]

    before = load_weights(model)
    view = engine_view(work / "megaeeve" / "run-1", 1)
    frozen = [n for n in before if n != "model.embed_tokens.added"]
    assert all(torch.equal(view[n], before[n].bfloat16().float()) for n in frozen)
    assert not all(torch.equal(view[n], before[n]) for n in frozen)  # without the rounding they would count as moved
    assert per["megaeeve"]["frozen_elements_moved"] == 0

    hf_before = load_file(str(work / "stage0-hf" / "model.safetensors"))
    hf_view = get_fp32_state_dict_from_zero_checkpoint(str(work / "peer" / "stage-1" / f"checkpoint-{s.steps}"))
    emb0 = hf_before["model.embed_tokens.weight"].bfloat16().float()
    moved = hook_rows_moved(emb0, hf_view["model.embed_tokens.weight"], base, added)
    assert per["peer"]["frozen_elements_moved"] == int(moved.sum()) > 0  # weight decay, as in fp32

    after = load_file(str(work / "limit" / "stage-1" / "weights.safetensors"))
    assert after["model.embed_tokens.added"].dtype == torch.float32
    assert all(torch.equal(after[n], before[n]) for n in frozen) and per["limit"]["frozen_elements_moved"] == 0


def test_steady_tokens_per_s_skips_the_first_steps_and_the_profiled_one():
    times = [1.0, 2.0, 1.0, 10.0, 1.0]  # steps 2..6; step 5 ran under the profiler
    assert bench.steady_tokens_per_s(times, 100, skip=2, windows=1) == pytest.approx(400 / 14)
    assert bench.steady_tokens_per_s(times, 100, skip=2, windows=1, leave_out=5) == pytest.approx(300 / 4)
    assert bench.steady_tokens_per_s(times, 100, skip=2, windows=3, leave_out=5) == pytest.approx(100 / 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_device_cuda_without_a_gpu_says_so():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_vs_trainer.py"), "--device", "cuda"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--device cuda: torch" in done.stderr and "sees no CUDA device" in done.stderr
