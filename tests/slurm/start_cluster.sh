#!/usr/bin/env bash
# Start a throwaway one-node SLURM cluster with two fake GPUs, for tests/test_slurm.py.
#
#   tests/slurm/start_cluster.sh [STATE_DIR]      (default /tmp/dime-slurm; prints `export SLURM_CONF=...`)
#   tests/slurm/stop_cluster.sh  [STATE_DIR]
#
# For a root shell on Debian 12 without systemd (a CI box): installs slurmctld, slurmd, slurm-client and munge
# with apt-get when they are missing, starts munged, slurmctld and slurmd by hand, and waits until the node is
# idle. Everything the cluster writes (config, state, logs, pid files) stays in STATE_DIR; /etc/slurm/{slurm,gres}.conf
# become symlinks to it (only if absent or already this script's). No accounting daemon: Snakemake must poll with squeue (MinJobAge=300
# keeps finished jobs visible). GPUs are gres entries backed by character devices that alias /dev/null (slurmd
# drops file-less GPUs); jobs see CUDA_VISIBLE_DEVICES=0/1 but no real GPU.
set -euo pipefail

STATE=${1:-${SLURM_TEST_DIR:-/tmp/dime-slurm}}
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-16817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-16818}

log() { echo "start_cluster: $*" >&2; }
die() { echo "start_cluster: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (starts slurmctld/slurmd/munged)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || die "apt-get install failed"
fi

mkdir -p "$STATE"/log

# --- munge: the packages generate /etc/munge/munge.key; munged must run as user munge.
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- munged --force || die "munged did not start"
    touch "$STATE/munged.started"
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n >/dev/null 2>&1 || die "munged is not answering"
fi

# --- fake GPUs: character devices with /dev/null's numbers (1,3).
GPU_FILES=/dev/null
GPUS=1
if { [ -c /dev/dime-fakegpu0 ] || mknod /dev/dime-fakegpu0 c 1 3; } 2>/dev/null \
    && { [ -c /dev/dime-fakegpu1 ] || mknod /dev/dime-fakegpu1 c 1 3; } 2>/dev/null; then
    GPU_FILES="/dev/dime-fakegpu[0-1]"
    GPUS=2
else
    log "mknod not permitted: one fake GPU on /dev/null"
fi

# --- the node as slurmd sees it (CPUs, sockets, memory), registered as localhost.
NODE_LINE=$(slurmd -C | head -1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
BOARDS=$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
SOCKETS=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
CORES=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
THREADS=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
MEMORY=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
[ -n "$CPUS" ] && [ -n "$MEMORY" ] || die "cannot read the node's resources from 'slurmd -C': $NODE_LINE"

cat >"$STATE/slurm.conf" <<EOF
# Written by tests/slurm/start_cluster.sh (throwaway test cluster).
ClusterName=dimetest
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/none
MinJobAge=300
ReturnToService=2
GresTypes=gpu
NodeName=localhost CPUs=$CPUS Boards=${BOARDS:-1} SocketsPerBoard=${SOCKETS:-1} CoresPerSocket=${CORES:-$CPUS} ThreadsPerCore=${THREADS:-1} RealMemory=$MEMORY Gres=gpu:fake:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
printf '# Written by tests/slurm/start_cluster.sh (throwaway test cluster).\nName=gpu Type=fake File=%s\n' \
    "$GPU_FILES" >"$STATE/gres.conf"

# A previous instance on this state directory is replaced, and its saved state goes with it: jobs restored from a
# run that was killed (a CI box reused after a timeout) would hold the node 'allocated' with no process behind them.
"$(dirname "$0")/stop_cluster.sh" "$STATE" --keep-munge >/dev/null 2>&1 || true
rm -rf "$STATE/state" "$STATE/spool"
mkdir -p "$STATE"/{state,spool}

# Clients inside jobs need the default config path: Snakemake's SLURM job step strips SLURM_* variables
# (SLURM_CONF included) before its nested srun. Link /etc/slurm to this cluster, never over a real configuration.
mkdir -p /etc/slurm
for name in slurm.conf gres.conf; do
    target=/etc/slurm/$name
    if [ -e "$target" ] && ! grep -q "tests/slurm/start_cluster.sh" "$target" 2>/dev/null; then
        die "$target exists and was not written by this script; refusing to replace a real SLURM configuration"
    fi
    ln -sfn "$STATE/$name" "$target"
done
export SLURM_CONF="$STATE/slurm.conf"

# --- daemons.
log "starting slurmctld and slurmd (config $SLURM_CONF)"
slurmctld -i -f "$SLURM_CONF" || die "slurmctld did not start; see $STATE/log/slurmctld.log"
slurmd -f "$SLURM_CONF" -N localhost || die "slurmd did not start; see $STATE/log/slurmd.log"

for _ in $(seq 200); do
    node_state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$node_state" in
        idle*) break ;;
        drain*|down*|inval*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.3
done
node_state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
[[ "$node_state" == idle* ]] || die "node not idle (state '$node_state'); see $STATE/log/"

log "cluster up: $CPUS CPUs, ${MEMORY} MB, $GPUS fake GPU(s)"
echo "export SLURM_CONF=$SLURM_CONF"
