#!/usr/bin/env bash
# Stop a cluster started by slurm/cluster/start.sh and remove what it made (daemons, namespaces,
# bridge, DIR).   slurm/cluster/stop.sh [--dir DIR] [--keep-dir]
set -uo pipefail

DIR=${MEGAEEVE_SLURM_DIR:-/tmp/megaeeve-slurm}
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=$2; shift 2 ;;
        --keep-dir) KEEP=1; shift ;;
        *) echo "stop.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -f "$DIR/cluster.env" ] || { echo "stop.sh: no cluster in $DIR"; exit 0; }
# shellcheck source=/dev/null
source "$DIR/cluster.env"

stop_pidfile() {  # TERM the daemon named by a pid file, then KILL it after 10 s
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    case $(cat "/proc/$pid/comm" 2>/dev/null) in slurm*|munged) ;; *) return 0 ;; esac  # gone, or a recycled pid
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

export SLURM_CONF=$DIR/slurm.conf
scancel --full --quiet --user=root 2>/dev/null || true
stop_pidfile "$DIR/slurmctld.pid"
for node in "${NODE_NAMES[@]}"; do stop_pidfile "$DIR/slurmd.$node.pid"; done
stop_pidfile "$DIR/munge/munged.pid"
if [ "$NODES" -ge 2 ]; then
    for node in "${NODE_NAMES[@]}"; do
        ip netns del "$node" 2>/dev/null || true
        ip link del "$node-h" 2>/dev/null || true
    done
    ip link del "$PREFIX-br" 2>/dev/null || true
fi
if [ "$KEEP" = 1 ]; then rm -f "$DIR/cluster.env"; else rm -rf "$DIR"; fi
echo "SLURM cluster in $DIR stopped"
