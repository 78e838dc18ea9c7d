#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian's slurm-wlm + munge), to run the
# SLURM layouts of docs/hpc.md for real: slurmctld and slurmd on this host, one partition
# `main` with the host's real CPUs and memory (from `slurmd -C`).
#
#   scripts/slurm-local.sh start    # installs slurm-wlm/munge if missing, writes the config,
#                                   # starts munged, slurmctld, slurmd, waits for the node
#   scripts/slurm-local.sh status
#   scripts/slurm-local.sh stop     # stops the daemons this script started (pid files)
#
# Config: /etc/slurm/slurm.conf (the machine's, so sbatch/squeue work without SLURM_CONF);
# state, spool, logs and the job completion log in SLURM_LOCAL_DIR (default
# /var/tmp/petsynth-slurm). Without cgroups (proctrack/linuxproc, task/none): memory limits
# (--mem) are bookkeeping only here, not enforced. Needs root.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/tmp/petsynth-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

log() { printf '[slurm-local] %s\n' "$*"; }

install() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurm-wlm)
    command -v munged >/dev/null || need+=(munge)
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
    fi
}

start_munge() {
    if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    echo started > "$DIR/munged.started-here"
    munge -n </dev/null | unmunge >/dev/null
    log "munged started"
}

write_conf() {
    local node
    # the node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory), minus UpTime
    node=$(slurmd -C | head -1)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" /etc/slurm
    [ -f "$CONF" ] && [ ! -f "$CONF.before-slurm-local" ] && cp "$CONF" "$CONF.before-slurm-local"
    cat > "$CONF" <<CONF
# single-node cluster written by scripts/slurm-local.sh (PetSynth)
ClusterName=petsynth-local
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups (the hybrid cgroup layout of these machines is not delegated): plain process
# tracking, no task containment, memory requests are accounted but not enforced
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
MinJobAge=3600
# jobs without --mem get 2 GB per CPU (not the whole node)
DefMemPerCPU=2048
$node
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    log "wrote $CONF: $node"
}

start() {
    install
    mkdir -p "$DIR"
    start_munge
    write_conf
    if scontrol ping 2>/dev/null | grep -q UP; then
        log "slurmctld already up: reconfigure"
        scontrol reconfigure
    else
        slurmctld
    fi
    if [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; then
        log "slurmd already up"
    else
        slurmd
    fi
    for _ in $(seq 60); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; then
            sinfo -N -o '%N %c %m %t %P'
            return
        fi
        sleep 1
    done
    sinfo -N || true
    tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" || true
    log "the node did not become idle"
    exit 1
}

stop_pid() {  # NAME PIDFILE: stop one daemon started by this script
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        log "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop() {
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    if [ -f "$DIR/munged.started-here" ]; then
        stop_pid munged /run/munge/munged.pid
        rm -f "$DIR/munged.started-here"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) scontrol ping || true; sinfo -N -o '%N %c %m %t %P' || true; squeue || true ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
