#!/usr/bin/env bash
# The srun task of usr1_requeue.sbatch: the role a training process plays on preemption.
set -u
restart=${SLURM_RESTART_COUNT-unset}
log() { echo "$*" >>events.txt; }
log "task start rank=$SLURM_PROCID restart=$restart"

if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then
    on_usr1() {
        # Requeueing terminates this job (SIGTERM to its tasks): ignore that until the log is written.
        trap '' TERM
        log "task got USR1 rank=$SLURM_PROCID restart=$restart"
        if scontrol requeue "$SLURM_JOB_ID"; then log "requeue ok"; else log "requeue failed rc=$?"; fi
        exit 0
    }
    trap on_usr1 USR1
    touch trap-ready
    # A background sleep + `wait` returns as soon as a trapped signal arrives (a foreground
    # command would delay the trap until it ends).
    for _ in $(seq 1200); do
        sleep 0.1 &
        wait $!
    done
    log "task never got USR1"
    exit 1
fi
log "task second run done restart=$restart"
