#!/usr/bin/env bash
# Chain the whole pipeline on SLURM: face preparation (array) -> merge -> pretraining -> evaluation,
# each stage starting only when the previous one succeeded (--dependency=afterok). Prints the job ids.
#
#   INPUT=/data/raw OUT=/data/faces CHUNKS=64 PACOFR_RUN_DIR=runs/vitb16 slurm/submit.sh [sbatch flags for all]
#   e.g. slurm/submit.sh --partition=gpu --account=myproj
#
# Environment: INPUT, OUT (the merged dataset; the pretraining reads it as PACOFR_DATA_ROOT), CHUNKS (prep
# array size) [64], WEIGHTS_DIR (facexlib weights, see prep_array.sbatch), PACOFR_DATA_ROOT (with SKIP_PREP=1),
# PACOFR_METHOD / PACOFR_SIZE_CONFIG / PACOFR_CONFIG / PACOFR_TRAINER_CONFIG / PACOFR_RUN_DIR (pretrain.sbatch),
# SKIP_PREP=1 (data already prepared: start at pretraining), PREP_ARGS / PRETRAIN_ARGS / EVAL_ARGS (sbatch
# flags for one stage only, e.g. PRETRAIN_ARGS="--nodes=4"; the CPU variant: PACOFR_DEVICE=cpu PRETRAIN_ARGS="--gpus-per-node=0
# --ntasks-per-node=2 --cpus-per-task=1" EVAL_ARGS="--gpus=0"). The run folder is fixed here, so eval finds
# the checkpoint pretraining wrote.
set -euo pipefail
# PREP_ARGS, PRETRAIN_ARGS and EVAL_ARGS are split into words on purpose (several flags each).

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHUNKS="${CHUNKS:-64}"
: "${PACOFR_RUN_DIR:=runs/pretrain-$(date -u +%Y%m%d-%H%M%S)}"
export PACOFR_RUN_DIR

submit() {  # submit [sbatch args...] -> prints the job id
    sbatch --parsable "$@" | cut -d';' -f1
}

dependency=()
if [[ "${SKIP_PREP:-0}" != 1 ]]; then
    : "${INPUT:?set INPUT (raw images) or SKIP_PREP=1}"
    : "${OUT:?set OUT (dataset folder)}"
    prep=$(submit "$@" ${PREP_ARGS:-} --array=0-$((CHUNKS - 1)) --export=ALL,INPUT="$INPUT",OUT="$OUT" "$HERE/prep_array.sbatch")
    echo "prep (array of $CHUNKS): $prep"
    merge=$(submit "$@" ${PREP_ARGS:-} --dependency=afterok:"$prep" --export=ALL,PREP_STEP=merge,OUT="$OUT" "$HERE/prep_array.sbatch")
    echo "merge: $merge"
    dependency=(--dependency=afterok:"$merge")
fi
# the pretraining reads the dataset this chain writes (OUT), unless PACOFR_DATA_ROOT says otherwise
if [[ -n "${OUT:-}" ]]; then export PACOFR_DATA_ROOT="${PACOFR_DATA_ROOT:-$OUT}"; fi
pretrain=$(submit "$@" ${PRETRAIN_ARGS:-} "${dependency[@]}" "$HERE/pretrain.sbatch")
echo "pretrain: $pretrain (run folder $PACOFR_RUN_DIR, data ${PACOFR_DATA_ROOT:-from the config})"
# afterok waits through requeues: a preempted pretraining job is not finished until its last run ends.
evaluation=$(submit "$@" ${EVAL_ARGS:-} --dependency=afterok:"$pretrain" --export=ALL,PACOFR_RUN_DIR="$PACOFR_RUN_DIR" "$HERE/eval.sbatch")
echo "eval: $evaluation"
echo "watch: squeue -u ${USER:-$(id -un)}; tail -f pacofr-pretrain-$pretrain.out; tensorboard --logdir $PACOFR_RUN_DIR/tb"
