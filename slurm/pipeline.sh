#!/usr/bin/env bash
# Submit stages FROM..TO of a run as a chain of SLURM jobs (slurm/stage.sh) and print their job ids.
#
#   slurm/pipeline.sh FROM TO [sbatch options for every stage] [-- train.py options]
#   e.g. MEGAEEVE_SETTINGS=slurm/settings.sh slurm/pipeline.sh 1 7 -N 4
#
# Each stage waits for the one before to succeed (--dependency=afterok); when a stage fails, the
# jobs after it are cancelled (--kill-on-invalid-dep=yes). A stage that is requeued after a
# preemption or time limit keeps the chain waiting until it finishes. Stages are the run's
# run_stages numbered FROM..TO (a custom stage table may skip numbers); stages already complete
# exit at once, so resubmitting a partly finished pipeline continues where it stopped.
# MEGAEEVE_SETTINGS is read here too, so SBATCH_PARTITION / SBATCH_ACCOUNT / ... set there apply.
# Output: one line per stage, "stage N job JOBID".
set -euo pipefail

die() { echo "pipeline.sh: error: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: slurm/pipeline.sh FROM TO [sbatch options] [-- train.py options]"
FROM=$1 TO=$2; shift 2
[[ $FROM =~ ^[0-9]+$ && $TO =~ ^[0-9]+$ ]] || die "FROM and TO must be stage numbers, got '$FROM' '$TO'"
SBATCH_ARGS=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do SBATCH_ARGS+=("$1"); shift; done
[ $# -eq 0 ] || shift  # what follows -- goes to train.py

export MEGAEEVE_HOME=${MEGAEEVE_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
# shellcheck source=slurm/common.sh
source "$MEGAEEVE_HOME/slurm/common.sh"
load_settings || exit 2
[ -n "${MEGAEEVE_RUN_CONFIG:-}" ] || die "set MEGAEEVE_RUN_CONFIG to the run's RUN.yaml (environment or MEGAEEVE_SETTINGS file)"
[ -f "$MEGAEEVE_RUN_CONFIG" ] || die "run config $MEGAEEVE_RUN_CONFIG does not exist"
MEGAEEVE_RUN_CONFIG=$(cd "$(dirname "$MEGAEEVE_RUN_CONFIG")" && pwd)/$(basename "$MEGAEEVE_RUN_CONFIG")
export MEGAEEVE_RUN_CONFIG
activate_python

IFS=$'\t' read -r STAGES ERROR < <(query_run_config stages "$FROM" "$TO") || die "could not read $MEGAEEVE_RUN_CONFIG with $PYTHON"
[ "$STAGES" != error ] || die "$ERROR"
[ -n "$STAGES" ] || die "$MEGAEEVE_RUN_CONFIG runs no stage numbered $FROM..$TO"

prev_job=
for stage in $STAGES; do
    dep=()
    [ -z "$prev_job" ] || dep=(--dependency="afterok:$prev_job" --kill-on-invalid-dep=yes)
    prev_job=$(sbatch --parsable --job-name="megaeeve-stage-$stage" "${dep[@]}" "${SBATCH_ARGS[@]}" \
        "$MEGAEEVE_HOME/slurm/stage.sh" "$stage" "$@")
    prev_job=${prev_job%%;*}  # --parsable prints "id" or "id;cluster"
    echo "stage $stage job $prev_job"
done
