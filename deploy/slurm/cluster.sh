#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying mdp's SLURM engine and for its tests.
#
#   deploy/slurm/cluster.sh start DIR    munge (if none is running), slurmctld and slurmd; waits for the node
#   deploy/slurm/cluster.sh stop DIR     stops what `start` started, by PID
#   deploy/slurm/cluster.sh status DIR   exit 0 when the node answers
#   deploy/slurm/cluster.sh env DIR      `export SLURM_CONF=...`, for sbatch, squeue, sinfo by hand
#
# Everything lives in DIR: slurm.conf, state, spool, PID files, daemon logs and the job-completion log
# (DIR/jobcomp.log; JobCompType=jobcomp/filetxt, since accounting storage would need slurmdbd). Needs root
# (SlurmUser=root) and Debian's slurmctld, slurmd, slurm-client and munge (deploy/system-packages.sh).
# Ports: SLURM_CTLD_PORT (6817) and SLURM_SLURMD_PORT (6818). Idempotent: `start` on a running cluster
# only waits for it; `stop` on a stopped one does nothing.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
export SLURM_CONF=$conf

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
node_idle() { sinfo -h -N -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; }

write_conf() {
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat > "$conf.tmp" <<CONF
# written by deploy/slurm/cluster.sh: a one-node test cluster
ClusterName=mdp-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURM_CTLD_PORT:-6817}
SlurmdPort=${SLURM_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$conf.tmp" "$conf"
}

start() {
    for tool in slurmctld slurmd sbatch sinfo munged munge; do
        command -v "$tool" >/dev/null 2>&1 || { echo "cluster.sh: $tool not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 2; }
    done
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: start needs root (SlurmUser=root)" >&2; exit 2; }
    if ! munge_works; then
        mkdir -p /run/munge && chown munge: /run/munge
        runuser -u munge -- munged
        for _ in $(seq 50); do munge_works && break; sleep 0.1; done
        munge_works || { echo "cluster.sh: munged did not start (see /var/log/munge/munged.log)" >&2; exit 1; }
        cp /run/munge/munged.pid "$dir/munged.pid"   # ours to stop
    fi
    alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" || write_conf
    # Foreground daemons in sessions of their own; $! is each daemon's own PID.
    if ! alive "$dir/slurmctld.pid"; then
        setsid slurmctld -D -f "$conf" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
        echo $! > "$dir/slurmctld.pid"
    fi
    if ! alive "$dir/slurmd.pid"; then
        setsid slurmd -D -f "$conf" </dev/null >>"$dir/log/slurmd.out" 2>&1 &
        echo $! > "$dir/slurmd.pid"
    fi
    for _ in $(seq 150); do node_idle && break; sleep 0.2; done
    sleep 0.5  # a daemon that cannot bind its port (another cluster on it) exits at once
    for daemon in slurmctld slurmd; do
        if ! alive "$dir/$daemon.pid"; then
            echo "cluster.sh: $daemon exited; its log ($dir/log/$daemon.log) ends:" >&2
            tail -3 "$dir/log/$daemon.log" >&2 2>/dev/null || true
            stop; exit 1
        fi
    done
    if ! node_idle; then
        echo "cluster.sh: the node did not come up within 30 s; logs in $dir/log" >&2
        tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 2>/dev/null || true
        exit 1
    fi
    echo "slurm: node $(hostname -s) up ($(sinfo -h -o '%c' | head -1) CPUs); SLURM_CONF=$conf"
}

stop_pid() {  # stop_pid PIDFILE: TERM, wait up to 10 s, then KILL; only the PID the file names
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munged.pid"
    echo "slurm: stopped ($dir)"
}

case $action in
    start) start ;;
    stop) stop ;;
    status) alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" && node_idle ;;
    env) echo "export SLURM_CONF=$conf" ;;
    *) usage ;;
esac
