#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests (needs root; Debian/Ubuntu).
#
#   cluster.sh start    install slurm+munge from apt if missing, write slurm.conf, start munged,
#                       slurmctld and slurmd, wait until the node is idle. A no-op when already up.
#   cluster.sh stop     stop slurmd and slurmctld (and munged, if this script started it).
#   cluster.sh status   exit 0 when the cluster answers and the node can run jobs.
#   cluster.sh logs     print the tail of every daemon log.
#
# Exit codes: 0 ok; 1 failure (logs printed); 2 not root; 3 slurm absent and apt unreachable.
#
# Settings (environment):
#   PACOFR_SLURM_STATE   state, spool, pid and log files       [/var/spool/pacofr-slurm]
#   PACOFR_SLURM_CONF    where slurm.conf is written            [/etc/slurm/slurm.conf]
#                        (anything else needs SLURM_CONF=<it> in every client's environment)
#   PACOFR_SLURM_CPUS    CPUs the node offers                   [nproc]
#   PACOFR_SLURM_WAIT_S  how long start waits for an idle node  [60]
#   PACOFR_SLURM_CRED_EXPIRE  step credential lifetime in s; a requeued job waits this + 1 s  [5]
set -euo pipefail

STATE=${PACOFR_SLURM_STATE:-/var/spool/pacofr-slurm}
CONF=${PACOFR_SLURM_CONF:-/etc/slurm/slurm.conf}
# Not plain nproc: it obeys OMP_NUM_THREADS, which test runs set to 1.
CPUS=${PACOFR_SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
WAIT_S=${PACOFR_SLURM_WAIT_S:-60}
CRED_EXPIRE=${PACOFR_SLURM_CRED_EXPIRE:-5}
NODE=$(uname -n)
NODE=${NODE%%.*}
LOG=$STATE/log
# Marks a slurm.conf as ours, so a real cluster's configuration is never overwritten.
MARKER="# Written by pacofr tests/slurm/cluster.sh: a one-node test cluster."
export SLURM_CONF=$CONF
# A signal ends the script through 'exit', so EXIT traps (clean-up) still run.
trap 'exit 1' INT TERM HUP

say() { echo "cluster.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    print_logs
    exit 1
}

print_logs() {
    local f
    for f in "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/munged.log; do
        [[ -s $f ]] || continue
        echo "----- last 40 lines of $f -----" >&2
        tail -n 40 "$f" >&2
    done
    if command -v scontrol >/dev/null && pid_alive slurmctld; then
        echo "----- scontrol show node $NODE -----" >&2
        timeout 10 scontrol show node "$NODE" >&2 || true
    fi
}

have_slurm() { command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null; }
have_munge() { command -v munged >/dev/null && command -v munge >/dev/null; }

# Installs from apt only what is missing. A temporary policy-rc.d stops the packages' postinst
# scripts from starting daemons with the distribution's (absent) configuration.
install_packages() {
    if have_slurm && have_munge; then
        return 0
    fi
    command -v apt-get >/dev/null || {
        say "slurm is not installed and there is no apt-get to install it"
        exit 3
    }
    say "installing slurm-wlm and munge from apt (quietly)"
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d out made_policy=0
    out=$(mktemp)
    # Expanded now (the trap fires after this function's locals are gone).
    # shellcheck disable=SC2064
    trap "rm -f '$out'" EXIT
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
        # Removed however this script ends (set -e, die, a signal).
        # shellcheck disable=SC2064
        trap "rm -f '$out' '$policy'" EXIT
    fi
    if ! apt-get update -qq >"$out" 2>&1; then
        cat "$out" >&2
        say "apt-get update failed: apt is unreachable and slurm is absent"
        exit 3
    fi
    if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$out" 2>&1; then
        cat "$out" >&2
        die "apt-get install slurm-wlm munge failed"
    fi
    rm -f "$out"
    if ((made_policy)); then rm -f "$policy"; fi
    trap - EXIT
    say "installed $(slurmctld -V) and $(munged -V 2>&1 | awk '{print $1; exit}')"
    have_slurm && have_munge || die "apt installed slurm-wlm and munge but sbatch/slurmctld/slurmd/munged are missing"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        return 0
    fi
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        say "creating munge key $key"
        mkdir -p /etc/munge
        mungekey --create --keyfile="$key" 2>/dev/null || dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
    # munged refuses keys, sockets and logs that others can write; it runs as user munge.
    chown munge:munge /etc/munge "$key"
    chmod 0700 /etc/munge
    chmod 0400 "$key"
    mkdir -p /run/munge /var/lib/munge /var/log/munge "$LOG"
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    : >"$LOG"/munged.log
    chown munge:munge "$LOG"/munged.log
    runuser -u munge -- munged --log-file="$LOG"/munged.log </dev/null >>"$LOG"/munged.log 2>&1 ||
        die "munged did not start"
    touch "$STATE"/munged.ours
    local i
    for i in $(seq 50); do
        munge_works && return 0
        sleep 0.1
    done
    die "munged started but 'munge -n | unmunge' fails"
}

# Memory the node offers: all of it less a margin for the OS, so slurmd never reports less than
# the configuration claims (which would drain the node).
real_memory_mb() {
    local total
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    echo $((total > 2048 ? total - 1024 : total / 2))
}

write_conf() {
    local target=$1
    cat >"$target" <<EOF
$MARKER
# Regenerated by every 'cluster.sh start'; edit the script, not this file.
ClusterName=pacofr-test
# Explicit addresses: the short hostname need not resolve on a CI machine.
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (EligibleTime = requeue + cred_expire + 1 s; default 120 s, minimum 5 s).
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
# cons_tres + CR_CPU: every CPU is a schedulable unit, so 2 tasks x 1 CPU fill a 2-CPU node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs every second (defaults: 60 s main loop, 30 s backfill), so a requeued job
# starts as soon as its EligibleTime passes instead of at the next periodic pass.
SchedulerParameters=sched_interval=1,bf_interval=1
# Batch jobs may requeue themselves (scontrol requeue, sbatch --requeue).
JobRequeue=1
# A node that was down registers back as usable without an admin.
ReturnToService=2
# Use the CPUs/memory written here even if the hardware looks different (a test node).
SlurmdParameters=config_overrides
# No accounting daemon: job state comes from 'scontrol show job', not sacct.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Keep finished jobs visible to 'scontrol show job' for 10 minutes.
MinJobAge=600
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or times out.
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

pid_alive() {
    local pidfile=$STATE/$1.pid pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    kill -0 "$pid" 2>/dev/null && [[ $(cat /proc/"$pid"/comm 2>/dev/null) == "$1"* ]]
}

node_state() { timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

node_usable() {
    case $(node_state) in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

wait_until_usable() {
    local deadline=$((SECONDS + WAIT_S)) state=""
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
        esac
        pid_alive slurmctld || die "slurmctld exited during start-up"
        pid_alive slurmd || die "slurmd exited during start-up"
        sleep 0.5
    done
    die "node $NODE not usable after ${WAIT_S}s (sinfo state: '${state:-no answer}')"
}

start() {
    [[ $(id -u) == 0 ]] || {
        say "must run as root (slurmd and munged are started by hand)"
        exit 2
    }
    install_packages
    mkdir -p "$STATE"/ctld "$STATE"/d "$LOG" "$(dirname "$CONF")"

    if [[ -e $CONF ]] && ! grep -qxF "$MARKER" "$CONF"; then
        say "ERROR: $CONF exists and was not written by this script; refusing to overwrite it."
        say "Set PACOFR_SLURM_CONF to another path (clients then need SLURM_CONF=that path)."
        exit 1
    fi
    local new=$STATE/slurm.conf.new
    write_conf "$new"
    local conf_changed=1
    [[ -e $CONF ]] && cmp -s "$new" "$CONF" && conf_changed=0

    if ((conf_changed == 0)) && pid_alive slurmctld && pid_alive slurmd && munge_works && node_usable; then
        rm -f "$new"
        say "already running (node $NODE: $(node_state))"
        return 0
    fi
    # Something is missing or the configuration changed: start cleanly from nothing.
    stop_slurm_daemons
    chmod 0644 "$new"
    mv "$new" "$CONF"
    start_munge

    local t0=$SECONDS
    # -c: forget jobs of an earlier cluster, so a stale pending job cannot take the CPUs.
    slurmctld -c -f "$CONF" </dev/null >>"$LOG"/slurmctld.log 2>&1 || die "slurmctld did not start"
    slurmd -c -f "$CONF" -N "$NODE" </dev/null >>"$LOG"/slurmd.log 2>&1 || die "slurmd did not start"
    wait_until_usable
    say "started in $((SECONDS - t0))s (node $NODE: $(node_state), conf $CONF, logs $LOG)"
}

# Waits for a daemon to exit, escalating from SIGTERM to SIGKILL.
stop_daemon() {
    local name=$1 pid i
    pid_alive "$name" || {
        rm -f "$STATE/$name.pid"
        return 0
    }
    pid=$(<"$STATE/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$name.pid"
}

stop_slurm_daemons() {
    # Cancel this cluster's jobs first: their slurmstepd processes would outlive slurmd.
    if pid_alive slurmctld && pid_alive slurmd; then
        local jobs i
        jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel --full $jobs 2>/dev/null || true
            for i in $(seq 100); do
                [[ -z $(timeout 10 squeue -h -t running,completing -o %A 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
    fi
    # slurmd first: slurmctld would otherwise mark the node down while it goes away.
    stop_daemon slurmd
    stop_daemon slurmctld
}

stop() {
    [[ $(id -u) == 0 ]] || {
        say "must run as root"
        exit 2
    }
    stop_slurm_daemons
    if [[ -e $STATE/munged.ours ]]; then
        munged --stop >/dev/null 2>&1 || true
        rm -f "$STATE"/munged.ours
    fi
    say "stopped"
}

status() {
    if pid_alive slurmctld && pid_alive slurmd && node_usable; then
        echo "running: node $NODE $(node_state)"
        return 0
    fi
    echo "not running"
    return 1
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    logs) print_logs ;;
    *)
        echo "usage: $0 start|stop|status|logs" >&2
        exit 64
        ;;
esac
