# shellcheck shell=bash
# Shared by slurm/stage.sh and slurm/pipeline.sh (sourced, not run): settings, environment, run-config queries.

# Source $MEGAEEVE_SETTINGS if set; variables already in the environment win over the file.
load_settings() {
    [ -n "${MEGAEEVE_SETTINGS:-}" ] || return 0
    [ -f "$MEGAEEVE_SETTINGS" ] || { echo "error: MEGAEEVE_SETTINGS=$MEGAEEVE_SETTINGS does not exist" >&2; return 2; }
    local from_env
    # `declare` inside a function would make the restored variables local: re-export them instead.
    from_env=$(export -p | sed -n -E 's/^declare -x ((MEGAEEVE|SBATCH)_)/export \1/p')
    set -a
    # shellcheck source=/dev/null
    source "$MEGAEEVE_SETTINGS"
    set +a
    eval "$from_env"
}

# Activate the Python environment (MEGAEEVE_ACTIVATE, else this checkout's .venv) and set PYTHON.
activate_python() {
    if [ -n "${MEGAEEVE_ACTIVATE:-}" ]; then
        eval "$MEGAEEVE_ACTIVATE"
    elif [ -f "$MEGAEEVE_HOME/.venv/bin/activate" ]; then
        # shellcheck source=/dev/null
        source "$MEGAEEVE_HOME/.venv/bin/activate"
    fi
    PYTHON=${MEGAEEVE_PYTHON:-python}
    export PYTHONPATH=$MEGAEEVE_HOME${PYTHONPATH:+:$PYTHONPATH}
}

# Ask the run config (RUN.yaml) a question, one tab-separated answer line; a config error prints
# "error<TAB>message". Questions:
#   stage N        -> stage N's directory, its predecessor's number and directory ("-" for none)
#   stages FROM TO -> the run's stages numbered FROM..TO, in run order, space-separated
query_run_config() {
    "$PYTHON" - "$MEGAEEVE_RUN_CONFIG" "$@" <<'PY'
import sys
from megaeeve.errors import ConfigError
from megaeeve.training.config import load_run_config
try:
    cfg = load_run_config(sys.argv[1])
    if sys.argv[2] == "stage":
        stage = int(sys.argv[3])
        prev = cfg.previous_stage(stage)
        print(cfg.stage_dir(stage), "-" if prev is None else prev, "-" if prev is None else cfg.stage_dir(prev), sep="\t")
    else:
        first, last = int(sys.argv[3]), int(sys.argv[4])
        print(" ".join(str(s) for s in cfg.run_stages if first <= s <= last))
except ConfigError as e:
    print("error", str(e).replace("\n", " "), sep="\t")
PY
}
