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


def test_three_trainers_same_data_and_exactness_from_their_outputs(tmp_path, gpt2_tokenizer_dir):
    model = make_stage0(tmp_path, "llama", gpt2_tokenizer_dir)
    ko, _ = assets.split_held_out(assets.korean_documents())
    ko_prefix = write_prefix(tmp_path / "ko", model, ko[:200])
    en_prefix = write_prefix(tmp_path / "en", model, assets.english_documents()[:60])
    work, out = tmp_path / "work", tmp_path / "result.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_vs_trainer.py"), "--stage0", str(model), "--data",
           f"ko={ko_prefix}", f"en={en_prefix}", "--stages", "1", "--steps", "2", "--skip", "0", "--windows", "1",
           "--seq-length", "32", "--weight-decay", "0.1", "--profile", "2", "--work", str(work), "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    s = bench.Settings(**result["settings"])
    per = result["stages"]["1"]
    for name in bench.TRAINERS:
        assert set(per[name]) >= {"tokens_per_s", "peak_rss_mib", "optimizer_bytes", "frozen_elements_moved"}
        assert per[name]["tokens_per_s"] > 0 and per[name]["peak_rss_mib"] > 0

    # Same samples, same order: what the peer's ranks and the loop fed their models, against the blend itself
    # and against megaeeve's own per-step batch checksums.
    _, samples = bench.stage_samples(work / "run-1.yaml", 1, s)
    blend = np.stack([samples[i][1] for i in range(s.steps * s.global_batch)]).astype(np.int64)
    peer = bench.peer_stream(work / "peer" / "stage-1", s)
    limit = np.load(work / "limit" / "stage-1" / "tokens.npy")
    assert np.array_equal(peer, blend) and np.array_equal(limit, blend)
    logged = [r["batch_checksum"] for r in metrics(work / "megaeeve" / "run-1" / "stage-1") if r["kind"] == "train"]
    assert logged == bench.step_checksums(blend, s)
    assert bench.step_checksums(blend[::-1], s) != logged  # the checksum sees the order

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
    hook_rows = torch.cat([emb[:base], emb[base + added:]]) != torch.cat([emb0[:base], emb0[base + added:]])
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


def test_steady_tokens_per_s_skips_the_first_steps_and_the_profiled_one():
    times = [1.0, 2.0, 1.0, 10.0, 1.0]  # steps 2..6; step 5 ran under the profiler
    assert bench.steady_tokens_per_s(times, 100, skip=2, windows=1) == pytest.approx(400 / 14)
    assert bench.steady_tokens_per_s(times, 100, skip=2, windows=1, leave_out=5) == pytest.approx(300 / 4)
    assert bench.steady_tokens_per_s(times, 100, skip=2, windows=3, leave_out=5) == pytest.approx(100 / 1)
