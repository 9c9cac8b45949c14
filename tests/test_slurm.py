"""slurm/stage.sh and slurm/pipeline.sh on a real SLURM: Debian's slurmctld + slurmd + munge on this machine.

The module starts a one-node cluster with slurm/cluster/start.sh (or reuses the one .ci/run started) and
runs the real trainer (2 tasks, gloo on CPU, ZeRO-3) on a tiny Phi model; the last test starts a second
cluster whose two slurmd live in their own network namespaces and trains one stage across both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _model_helpers import expand, save_model, tiny_phi
from _train_helpers import REPO, ds_config, metrics, run_config, weights

from megaeeve import assets
from megaeeve.model import parameter_roles, read_model_meta
from megaeeve.tokenizer_io import load_tokenizer

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol")
if missing := [b for b in SLURM_BINARIES if shutil.which(b) is None]:
    pytestmark.append(pytest.mark.skip(reason=f"SLURM not installed ({', '.join(missing)} missing): "
                                              "apt-get install slurm-wlm slurmctld slurmd munge (as .ci/run does)"))

CLUSTER = REPO / "slurm" / "cluster"
STAGE_SH = REPO / "slurm" / "stage.sh"
CPU_FLAGS = ["--gres=none", "--ntasks-per-node=2"]  # the script's defaults ask for 8 GPUs per node
STAGE1_STEPS = 10


def _cluster_up(conf: Path) -> bool:
    env = {**os.environ, "SLURM_CONF": str(conf)}
    return conf.exists() and subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True,
                                            timeout=30).stdout.count("UP") > 0


def _start_cluster(directory: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(CLUSTER / "start.sh"), "--dir", str(directory), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"slurm/cluster/start.sh failed:\n{done.stdout}\n{done.stderr}"
    return done


def _stop_cluster(directory: Path) -> None:
    subprocess.run([str(CLUSTER / "stop.sh"), "--dir", str(directory)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a running one-node cluster: the one .ci/run started, else one started here."""
    directory = Path(os.environ.get("MEGAEEVE_SLURM_DIR", "/tmp/megaeeve-slurm"))
    conf = directory / "slurm.conf"
    started = not _cluster_up(conf)
    if started:
        _start_cluster(directory)
    yield conf
    if started:
        _stop_cluster(directory)


@pytest.fixture(scope="module")
def workspace(module_tmp, gpt2_tokenizer_dir, korean_split, english_docs):
    """A stage-0 model and a Korean + English dataset made with tools/extend_model.py and tools/preprocess_data.py."""
    tmp = module_tmp("slurm")
    base = save_model(tiny_phi(), tmp / "phi-base")
    tokenizer = expand(load_tokenizer(gpt2_tokenizer_dir), tmp / "expanded-tokenizer")
    stage0 = tmp / "stage0"
    _tool("extend_model.py", "--base-model", base, "--base-tokenizer", gpt2_tokenizer_dir, "--tokenizer", tokenizer,
          "--output", stage0, "--pad-vocab-to-multiple-of", "64", "--init", "eeve")
    # Short documents dense in the expanded tokenizer's new token " 법률" (Korean lines that use it), so even
    # a few steps of 32-token samples see new input rows; plus English paragraphs.
    ko = assets.write_jsonl([x.strip() for d in korean_split[0] for x in d.splitlines() if " 법률" in x],
                            tmp / "ko.jsonl")
    en = assets.write_jsonl([x for d in english_docs[:10] for x in d.split("\n\n") if x.strip()][:40],
                            tmp / "en.jsonl")
    _tool("preprocess_data.py", "--input", ko, en, "--output-prefix", tmp / "corpus", "--tokenizer", stage0,
          "--append-eod", "--eod-token", "<|endoftext|>", "--no-progress")
    return {"tmp": tmp, "stage0": stage0, "prefix": tmp / "corpus", "ds": ds_config(tmp / "ds.json")}


def _tool(name: str, *args) -> None:
    done = subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"tools/{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _run(ws: dict, name: str, stages: dict, **training) -> Path:
    """A RUN.yaml for run `name` (run_dir next to it) over the workspace's model and dataset."""
    return run_config(ws["tmp"] / f"{name}.yaml", ws["tmp"] / name, ws["stage0"],
                      [{"prefix": str(ws["prefix"]), "weight": 1.0, "name": "mixed"}], stages,
                      run_stages=sorted(stages),
                      training={"eval_samples": 2, "checkpoint_every": 0, "report_to": [], "progress_bar": False,
                                **training})


def _env(conf: Path, ws: dict, run_cfg: Path) -> dict:
    return {**os.environ, "SLURM_CONF": str(conf), "MEGAEEVE_RUN_CONFIG": str(run_cfg),
            "MEGAEEVE_DS_CONFIG": str(ws["ds"]), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def _sbatch(env: dict, cwd: Path, *args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _job(env: dict, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait_job(env: dict, job: str, timeout: float = 300) -> dict[str, str]:
    """Wait until `job` has finished for good (not requeued); returns its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = _job(env, job)
        if record.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return record
        time.sleep(0.5)
    raise TimeoutError(f"job {job} still {_job(env, job).get('JobState')} after {timeout} s")


def _log(cwd: Path, job: str, name: str = "megaeeve") -> str:
    path = cwd / f"{name}-{job}.out"
    return path.read_text() if path.exists() else ""


def _roles(model_dir: Path) -> dict[str, str]:
    from transformers import AutoConfig

    from megaeeve.model.checkpoint import build_split_model

    with torch.device("meta"):
        model = build_split_model(AutoConfig.from_pretrained(str(model_dir)), read_model_meta(model_dir), torch.float32)
    return parameter_roles(model)


def _logged_steps(stage_dir: Path) -> int:
    """Training steps in metrics.jsonl so far (the last line may be half written)."""
    path = stage_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for x in lines if x.endswith("}") and json.loads(x)["kind"] == "train")


def _train_records(stage_dir: Path) -> list[tuple]:
    return [(r["step"], r["consumed_samples"], r["batch_checksum"], r["loss"])
            for r in metrics(stage_dir) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def stage1_run(cluster, workspace):
    """Run A: stage 1 submitted with plain sbatch (2 tasks on CPU), uninterrupted."""
    cfg = _run(workspace, "run-a", {1: {"steps": STAGE1_STEPS}, 2: {"steps": 2}, 3: {"steps": 2, "lr": 1e-5}})
    env = _env(cluster, workspace, cfg)
    job = _sbatch(env, workspace["tmp"], *CPU_FLAGS, str(STAGE_SH), "1")
    record = _wait_job(env, job)
    return {"cfg": cfg, "env": env, "job": job, "record": record, "run_dir": workspace["tmp"] / "run-a"}


def test_stage1_on_two_tasks(stage1_run, workspace):
    log = _log(workspace["tmp"], stage1_run["job"])
    assert stage1_run["record"]["JobState"] == "COMPLETED", log
    assert "stage 1: 2 processes on" in log
    stage_dir = stage1_run["run_dir"] / "stage-1"
    done = json.loads((stage_dir / "DONE").read_text())
    assert done["stage"] == 1 and done["steps"] == STAGE1_STEPS
    assert (stage_dir / "checkpoints" / "latest").is_file()
    records = _train_records(stage_dir)
    assert [r[0] for r in records] == list(range(1, STAGE1_STEPS + 1))
    assert records[0][1] == 2 * 2 * 2  # micro 2 x accumulation 2 x world size 2: both tasks joined one job
    roles = _roles(workspace["stage0"])
    before, after = weights(workspace["stage0"]), weights(stage_dir / "final")
    for name, role in roles.items():
        assert torch.equal(before[name], after[name]) != (role == "input_added"), (name, role)


def test_pipeline_chains_stages_from_predecessor_weights(stage1_run, workspace):
    env, run_dir = stage1_run["env"], stage1_run["run_dir"]
    done = subprocess.run([str(REPO / "slurm" / "pipeline.sh"), "1", "3", *CPU_FLAGS], env=env, cwd=workspace["tmp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    jobs = dict(re.findall(r"^stage (\d+) job (\d+)$", done.stdout, re.M))
    assert list(jobs) == ["1", "2", "3"], done.stdout
    pending = _job(env, jobs["3"])
    assert pending["JobState"] in ("PENDING", "RUNNING") and f"afterok:{jobs['2']}" in pending.get("Dependency", ""), \
        pending
    records = {s: _wait_job(env, j) for s, j in jobs.items()}
    logs = {s: _log(workspace["tmp"], j, f"megaeeve-stage-{s}") for s, j in jobs.items()}
    assert all(r["JobState"] == "COMPLETED" for r in records.values()), logs
    assert "stage 1 is already complete" in logs["1"]  # run A's stage 1 is reused, not retrained
    finals = {s: weights(run_dir / f"stage-{s}" / "final") for s in (1, 2, 3)}
    finals[0] = weights(workspace["stage0"])
    roles = _roles(workspace["stage0"])
    for s in (2, 3):
        assert json.loads((run_dir / f"stage-{s}" / "DONE").read_text())["source"] == str(run_dir / f"stage-{s - 1}" / "final")
    for name, role in roles.items():
        # Stage 2 trains only new output rows: everything else is stage 1's final tensor, bitwise.
        assert torch.equal(finals[2][name], finals[1][name]) == (role != "output_added"), (name, role)
        if role in ("input_added", "output_added"):  # stage 3 (tiny lr) moved them a little from stage 2's values
            dist_prev = float((finals[3][name] - finals[2][name]).norm())
            dist_stage0 = float((finals[3][name] - finals[0][name]).norm())
            assert dist_prev < dist_stage0 / 4, (name, dist_prev, dist_stage0)
            assert dist_prev > 0 or role == "input_added", name  # new input rows move only where new tokens occur
        else:
            assert torch.equal(finals[3][name], finals[2][name]), name


def test_report_of_a_run_trained_through_slurm(stage1_run, workspace):
    """`megaeeve report` on a run that has no pipeline layout: its RUN.yaml given, the base from stage-0's record,
    the user's prompts, and each stage's last evaluation read back from its metrics."""
    run_dir, cfg = stage1_run["run_dir"], stage1_run["cfg"]
    done = subprocess.run([sys.executable, "-m", "megaeeve", "report", str(run_dir), "--config", str(cfg),
                           "--prompt", "안녕하세요", "--prompt", "Hello there", "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "report" / "report.json").read_text())
    stages = sorted(int(d.name.split("-")[1]) for d in run_dir.glob("stage-*") if (d / "DONE").is_file())
    assert stages[0] == 1 and sorted(map(int, report["frozen_checks"])) == stages
    assert all(c["ok"] and c["trainable_changed"] > 0 for c in report["frozen_checks"].values())
    assert report["prompts"] == ["안녕하세요", "Hello there"]
    assert set(report["samples"]) == {"base", f"stage {stages[-1]}"}
    for number in stages:
        last = [r for r in metrics(run_dir / f"stage-{number}") if r["kind"] == "eval"][-1]
        assert report["final_evals"][str(number)]["eval_loss_mixed"] == last["eval_loss_mixed"]
    md = (run_dir / "report" / "report.md").read_text()
    assert "**Prompt:** 안녕하세요" in md and "No expansion_report.json" in md
    missing = subprocess.run([sys.executable, "-m", "megaeeve", "report", str(run_dir)], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "give the run's RUN.yaml with --config" in missing.stderr


def test_usr1_requeues_and_resumes_to_the_uninterrupted_weights(stage1_run, cluster, workspace):
    cfg = _run(workspace, "run-b", {1: {"steps": STAGE1_STEPS}})
    env, stage_dir = _env(cluster, workspace, cfg), workspace["tmp"] / "run-b" / "stage-1"
    job = _sbatch(env, workspace["tmp"], *CPU_FLAGS, str(STAGE_SH), "1")
    deadline = time.monotonic() + 240
    while _logged_steps(stage_dir) < 2:
        assert time.monotonic() < deadline and _job(env, job)["JobState"] in ("PENDING", "RUNNING"), _log(
            workspace["tmp"], job)
        time.sleep(0.1)
    # What --signal=B:USR1@N does before a time limit: SIGUSR1 to the batch shell only.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True, timeout=30)
    while (record := _job(env, job))["Restarts"] == "0" or record["JobState"] != "PENDING":
        assert time.monotonic() < deadline and record["JobState"] in ("RUNNING", "COMPLETING", "PENDING"), record
        time.sleep(0.2)
    assert not (stage_dir / "DONE").exists()
    # SLURM holds a requeued job for two minutes (BeginTime); release it sooner, but not within the second
    # the old run's job credential was revoked (slurmd would refuse the new launch).
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"], env=env, check=True, timeout=30)
    record = _wait_job(env, job)
    log = _log(workspace["tmp"], job)
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", log
    assert "got SIGUSR1" in log and "requeueing job" in log
    resumed = int(re.search(r"resumed at step (\d+)", log).group(1))
    assert 2 <= resumed < STAGE1_STEPS
    straight = stage1_run["run_dir"] / "stage-1"
    assert _train_records(stage_dir) == _train_records(straight)
    a, b = weights(straight / "final"), weights(stage_dir / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_without_predecessor_is_refused_and_stops_the_chain(cluster, workspace):
    cfg = _run(workspace, "run-d", {1: {"steps": 2}, 2: {"steps": 2}, 3: {"steps": 2}})
    # The run config comes from a settings file; the environment's ds_config wins over the file's.
    settings = workspace["tmp"] / "settings.sh"
    settings.write_text(f"MEGAEEVE_RUN_CONFIG={cfg}\nMEGAEEVE_DS_CONFIG=/nonexistent/ds.json\n")
    env = {**_env(cluster, workspace, cfg), "MEGAEEVE_SETTINGS": str(settings)}
    del env["MEGAEEVE_RUN_CONFIG"]
    job = _sbatch(env, workspace["tmp"], *CPU_FLAGS, str(STAGE_SH), "3")
    record = _wait_job(env, job, timeout=60)
    log = _log(workspace["tmp"], job)
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "2:0", (record, log)
    run_dir = workspace["tmp"] / "run-d"
    assert f"stage 3 starts from stage 2's final weights, but {run_dir}/stage-2 has no DONE" in log
    assert not (run_dir / "stage-3").exists()
    assert "DeepSpeed" not in log  # refused before any training process started

    done = subprocess.run([str(REPO / "slurm" / "pipeline.sh"), "2", "3", *CPU_FLAGS], env=env, cwd=workspace["tmp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    jobs = dict(re.findall(r"^stage (\d+) job (\d+)$", done.stdout, re.M))
    assert _wait_job(env, jobs["2"], timeout=60)["JobState"] == "FAILED"
    assert _wait_job(env, jobs["3"], timeout=60)["JobState"] == "CANCELLED"  # afterok can never be satisfied
    assert not (run_dir / "stage-2").exists() and not (run_dir / "stage-3").exists()


def test_start_refuses_a_running_cluster_and_replaces_a_stopped_one(cluster, tmp_path):
    """A cluster directory left by a killed run (daemons gone, pid files recycled) must not block the next start;
    a live one must not be touched."""
    again = subprocess.run([str(CLUSTER / "start.sh"), "--dir", str(cluster.parent)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 1 and "already holds a running cluster" in again.stderr, again.stderr
    assert _cluster_up(cluster)
    # What a copied machine or a reboot leaves: the files, and pid files naming dead or unrelated processes.
    directory = tmp_path / "cluster"
    (directory / "munge").mkdir(parents=True)
    (directory / "cluster.env").write_text(f"NODES=1\nPREFIX=mev0\nNODE_NAMES=({os.uname().nodename})\n")
    (directory / "slurmctld.pid").write_text(f"{os.getpid()}\n")  # this pytest: must survive the clean-up
    (directory / "munge" / "munged.pid").write_text("4194999\n")
    try:
        restarted = _start_cluster(directory, "--port", "6847")
        assert "holds a stopped cluster" in restarted.stderr
        assert _cluster_up(directory / "slurm.conf")
    finally:
        _stop_cluster(directory)
    assert not directory.exists() and _cluster_up(cluster)


@pytest.fixture(scope="module")
def two_node_cluster():
    """A second cluster: two slurmd in their own network namespaces on a bridge this test creates."""
    if missing := [b for b in ("ip", "unshare", "nsenter") if shutil.which(b) is None]:
        pytest.skip(f"two-node test needs {', '.join(missing)} (apt-get install iproute2 util-linux)")
    directory = Path("/tmp/megaeeve-slurm-2n")
    _start_cluster(directory, "--nodes", "2", "--port", "6837", "--subnet", "10.231.7")
    yield directory / "slurm.conf"
    _stop_cluster(directory)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "mev2317" not in links, links


def test_one_stage_across_two_namespaced_nodes(two_node_cluster, workspace):
    cfg = _run(workspace, "run-c", {1: {"steps": 2}})
    env = _env(two_node_cluster, workspace, cfg)
    job = _sbatch(env, workspace["tmp"], "--gres=none", "-N", "2", "--ntasks-per-node=1", str(STAGE_SH), "1")
    record = _wait_job(env, job)
    log = _log(workspace["tmp"], job)
    assert record["JobState"] == "COMPLETED", log
    assert "2 processes on mev2317-n[1-2], rendezvous mev2317-n1:" in log
    stage_dir = workspace["tmp"] / "run-c" / "stage-1"
    assert (stage_dir / "DONE").is_file()
    assert _train_records(stage_dir)[0][1] == 2 * 2 * 2  # world size 2
