#!/usr/bin/env bash
# Train one EEVE stage on a SLURM allocation: one megaeeve/train.py process per GPU, started by srun.
#
#   sbatch [sbatch options] slurm/stage.sh STAGE [train.py options, e.g. --overwrite]
#
# The #SBATCH lines below are defaults; ordinary sbatch flags and SBATCH_* environment variables
# override them (`sbatch -N 4 --time 2-00:00:00 slurm/stage.sh 4`; on CPU nodes:
# `sbatch --gres=none --ntasks-per-node=2 slurm/stage.sh 1`). What to train and how to start
# Python comes from environment variables, optionally collected in a settings file
# (MEGAEEVE_SETTINGS=path, see slurm/settings.sh.example; variables already in the environment win):
#
#   MEGAEEVE_RUN_CONFIG   RUN.yaml of the run (required; relative paths: from the submit directory)
#   MEGAEEVE_DS_CONFIG    DeepSpeed JSON (default: ds_configs/zero3.json of this checkout)
#   MEGAEEVE_ACTIVATE     shell code run first, e.g. "source /opt/venv/bin/activate" or "module load x"
#                         (default: source .venv/bin/activate of this checkout if it exists)
#   MEGAEEVE_PYTHON       Python to run (default: python)
#   MEGAEEVE_SRUN_ARGS    extra srun options, e.g. a container: "--container-image=... --container-mounts=..."
#   MEGAEEVE_TRAIN_ARGS   extra train.py options for every stage
#   MEGAEEVE_MASTER_ADDR  rendezvous host (default: the allocation's first node)
#   MEGAEEVE_MASTER_PORT  rendezvous port (default: 20000 + job id % 20000)
#   MEGAEEVE_SRUN_WAIT    seconds srun lets the other ranks run on once one has exited (default: 120)
#   MEGAEEVE_HOME         this checkout (default: found from the submitted script's path)
#
# Preemption and time limits: SLURM sends SIGUSR1 to this shell (--signal=B:USR1@SECONDS); it is
# forwarded to the training processes, which checkpoint at the next step boundary and exit with
# code 99 (megaeeve/training/signals.py); the job then requeues itself and the next run resumes
# from that checkpoint. Exit 2: configuration error or missing predecessor (no requeue).
#
#SBATCH --job-name=megaeeve
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

REQUEUE_EXIT_CODE=99  # megaeeve/training/signals.py
STOP_SIGNAL_EXIT_CODE=138  # 128 + SIGUSR1: a stop signal that arrived before train.py installed its handler

die() { echo "stage.sh: error: $*" >&2; exit 2; }
requeue() {
    echo "stage.sh: $1; requeueing job $SLURM_JOB_ID to resume from the latest checkpoint"
    scontrol requeue "$SLURM_JOB_ID" || echo "stage.sh: scontrol requeue failed (job cancelled?); resubmit to resume" >&2
    exit "$REQUEUE_EXIT_CODE"
}

# SLURM's --signal=B:USR1 reaches only this shell: remember it, and pass it to srun, which forwards it
# to the tasks; each task execs train.py, so the signal reaches Python itself.
stop_requested=0
srun_pid=
# shellcheck disable=SC2317  # invoked by the trap
forward_stop() {
    stop_requested=1
    echo "stage.sh: got SIGUSR1, asking the trainer to checkpoint and stop"
    [ -z "$srun_pid" ] || kill -USR1 "$srun_pid" 2>/dev/null || true
}
trap forward_stop USR1

[ $# -ge 1 ] || die "usage: sbatch [sbatch options] slurm/stage.sh STAGE [train.py options]"
STAGE=$1; shift
[[ $STAGE =~ ^[0-9]+$ ]] || die "STAGE must be a stage number, got '$STAGE'"

if [ -z "${MEGAEEVE_HOME:-}" ]; then
    # sbatch runs a copy of this script from the spool directory; the submitted path is in the job record.
    script=$0
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    fi
    MEGAEEVE_HOME=$(cd "$(dirname "$script")/.." && pwd)
fi
[ -f "$MEGAEEVE_HOME/slurm/common.sh" ] || die "MEGAEEVE_HOME=$MEGAEEVE_HOME is not a megaeeve checkout; set MEGAEEVE_HOME"
# shellcheck source=slurm/common.sh
source "$MEGAEEVE_HOME/slurm/common.sh"
load_settings || exit 2
[ -n "${MEGAEEVE_RUN_CONFIG:-}" ] || die "set MEGAEEVE_RUN_CONFIG to the run's RUN.yaml (environment or MEGAEEVE_SETTINGS file)"
[ -f "$MEGAEEVE_RUN_CONFIG" ] || die "run config $MEGAEEVE_RUN_CONFIG does not exist (cwd $(pwd))"
DS_CONFIG=${MEGAEEVE_DS_CONFIG:-$MEGAEEVE_HOME/ds_configs/zero3.json}
[ -f "$DS_CONFIG" ] || die "ds_config $DS_CONFIG does not exist (cwd $(pwd))"
activate_python

# Fail fast, before the allocation's processes start: stage N needs its predecessor's final/ and DONE
# (train.py checks again, with vocabulary and shapes). A stage that is already complete is a no-op,
# so a resubmitted pipeline skips finished stages.
IFS=$'\t' read -r STAGE_DIR PREV_STAGE PREV_DIR < <(query_run_config stage "$STAGE") \
    || die "could not read $MEGAEEVE_RUN_CONFIG with $PYTHON (is the environment activated? MEGAEEVE_ACTIVATE)"
[ "$STAGE_DIR" != error ] || die "$PREV_STAGE"
if [ "$PREV_STAGE" != - ] && { [ ! -f "$PREV_DIR/DONE" ] || [ ! -d "$PREV_DIR/final" ]; }; then
    die "stage $STAGE starts from stage $PREV_STAGE's final weights, but $PREV_DIR has no DONE and final/" \
        "(stage $PREV_STAGE is incomplete or has not run: sbatch slurm/stage.sh $PREV_STAGE, or slurm/pipeline.sh)"
fi
if [ -f "$STAGE_DIR/DONE" ] && [[ " $* ${MEGAEEVE_TRAIN_ARGS:-} " != *" --overwrite "* ]]; then
    echo "stage.sh: stage $STAGE is already complete ($STAGE_DIR/DONE); nothing to do (pass --overwrite to retrain)"
    exit 0
fi

[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a SLURM job: submit with sbatch slurm/stage.sh $STAGE"
export MASTER_ADDR=${MEGAEEVE_MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
export MASTER_PORT=${MEGAEEVE_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export WORLD_SIZE=$SLURM_NTASKS
# srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05).
[ -z "${SLURM_CPUS_PER_TASK:-}" ] || export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
echo "stage.sh: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) stage $STAGE: $WORLD_SIZE processes on" \
     "$SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT, config $MEGAEEVE_RUN_CONFIG, ds_config $DS_CONFIG"

if [ "$stop_requested" = 1 ]; then
    requeue "SIGUSR1 arrived before training started"
fi
# shellcheck disable=SC2086,SC2016
srun --kill-on-bad-exit=0 --wait="${MEGAEEVE_SRUN_WAIT:-120}" ${MEGAEEVE_SRUN_ARGS:-} \
    bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' megaeeve-rank \
    "$PYTHON" -u "$MEGAEEVE_HOME/megaeeve/train.py" --ds_config "$DS_CONFIG" --config "$MEGAEEVE_RUN_CONFIG" \
    --stage "$STAGE" ${MEGAEEVE_TRAIN_ARGS:-} "$@" &
srun_pid=$!
[ "$stop_requested" = 0 ] || kill -USR1 "$srun_pid" 2>/dev/null || true  # arrived while srun was starting
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid" || true; done  # a trapped signal ends `wait` early
rc=0; wait "$srun_pid" || rc=$?  # bash keeps the exit status of a finished background job

if [ "$rc" -eq "$REQUEUE_EXIT_CODE" ] || { [ "$stop_requested" = 1 ] && [ "$rc" -eq "$STOP_SIGNAL_EXIT_CODE" ]; }; then
    requeue "trainer stopped with exit code $rc"
fi
echo "stage.sh: stage $STAGE finished with exit code $rc"
exit "$rc"
