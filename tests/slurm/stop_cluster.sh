#!/usr/bin/env bash
# Stop the test cluster of tests/slurm/start_cluster.sh: cancel its jobs, stop slurmd and slurmctld (by their pid
# files in STATE_DIR) and munged if start_cluster.sh started it. Processes are ended by pid, never by name.
#
#   tests/slurm/stop_cluster.sh [STATE_DIR] [--keep-munge]
set -uo pipefail

STATE=${1:-${SLURM_TEST_DIR:-/tmp/dime-slurm}}
KEEP_MUNGE=${2:-}
export SLURM_CONF="$STATE/slurm.conf"

stop_pid_file() {
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$file"
}

if [ -f "$SLURM_CONF" ] && command -v scancel >/dev/null; then
    scancel --quiet --full --partition=debug 2>/dev/null || true
fi
stop_pid_file "$STATE/slurmd.pid"
stop_pid_file "$STATE/slurmctld.pid"

for name in slurm.conf gres.conf; do
    [ "$(readlink "/etc/slurm/$name" 2>/dev/null)" = "$STATE/$name" ] && rm -f "/etc/slurm/$name"
done

if [ "$KEEP_MUNGE" != "--keep-munge" ] && [ -f "$STATE/munged.started" ]; then
    stop_pid_file /run/munge/munged.pid
    rm -f "$STATE/munged.started"
fi
exit 0
