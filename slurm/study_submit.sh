#!/usr/bin/env bash
# Submit a method study on SLURM: one array task per cell (slurm/study.sbatch), then the table
# (`pacofr study aggregate`) once every cell succeeded (--dependency=afterok). Prints both job ids.
#
#   slurm/study_submit.sh [STUDY_CONFIG] [sbatch flags for both jobs]
#   slurm/study_submit.sh configs/study/default.yaml --partition=cpu --account=myproj
#   STUDY_QUICK=1 STUDY_DATA_ROOT=/data/study-faces slurm/study_submit.sh     # the 2-cell quick grid
#
# The number of cells N comes from `pacofr study list --count`; the array is --array=0-(N-1). Submitting
# again after a failure or a TIMEOUT is safe: finished cells are skipped at once, interrupted ones resume.
#
# Environment (see slurm/study.sbatch): STUDY_CONFIG [configs/study/default.yaml; a first argument that is not
# a flag overrides it], STUDY_ROOT [runs/study], STUDY_DATA_ROOT [the config's data_root], STUDY_QUICK=1
# (--quick), CELL_ARGS / AGGREGATE_ARGS (sbatch flags for one of the two jobs only, e.g.
# CELL_ARGS="--gres=gpu:1 --cpus-per-task=8"), STUDY_AFTER [afterok; afterany writes the table even when
# some cells failed, naming them as missing], PACOFR_PYTHON, PACOFR_REPO [the repository holding this script].
# Relative paths are relative to the repository; the job logs land in the current folder.
set -euo pipefail
# CELL_ARGS and AGGREGATE_ARGS are split into words on purpose (several flags each).

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${PACOFR_REPO:-$(cd "$HERE/.." && pwd)}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    STUDY_CONFIG="$1"
    shift
fi
STUDY_CONFIG="${STUDY_CONFIG:-configs/study/default.yaml}"
STUDY_ROOT="${STUDY_ROOT:-runs/study}"
STUDY_QUICK="${STUDY_QUICK:-0}"
AFTER="${STUDY_AFTER:-afterok}"
PY="${PACOFR_PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python; fi
fi

if [[ "$STUDY_QUICK" != 0 && "$STUDY_QUICK" != 1 ]]; then
    echo "study_submit.sh: STUDY_QUICK must be 0 or 1, got '$STUDY_QUICK'" >&2
    exit 2
fi

study_args=(--config "$STUDY_CONFIG" --root "$STUDY_ROOT")
[[ -n "${STUDY_DATA_ROOT:-}" ]] && study_args+=(--data-root "$STUDY_DATA_ROOT")
[[ "$STUDY_QUICK" == 1 ]] && study_args+=(--quick)

N=$(cd "$REPO" && "$PY" -m pacofr.cli study list "${study_args[@]}" --count)
if ! [[ "$N" =~ ^[0-9]+$ ]] || (( N < 1 )); then
    echo "study_submit.sh: \`pacofr study list --count\` gave '$N', expected a number of cells >= 1" >&2
    exit 2
fi

# The jobs get the same settings the count was made with (and find the repository without the submit folder).
export_vars="ALL,PACOFR_REPO=$REPO,STUDY_CONFIG=$STUDY_CONFIG,STUDY_ROOT=$STUDY_ROOT,STUDY_QUICK=$STUDY_QUICK"
[[ -n "${STUDY_DATA_ROOT:-}" ]] && export_vars+=",STUDY_DATA_ROOT=$STUDY_DATA_ROOT"

submit() {  # submit [sbatch args...] -> prints the job id
    sbatch --parsable "$@" | cut -d';' -f1
}

cells=$(submit "$@" ${CELL_ARGS:-} --array=0-$((N - 1)) --export="$export_vars,STUDY_STEP=cell" \
    "$HERE/study.sbatch")
echo "cells (array of $N): $cells"
aggregate=$(submit "$@" ${AGGREGATE_ARGS:-} --dependency="$AFTER:$cells" --job-name=pacofr-study-aggregate \
    --output=%x-%j.out --export="$export_vars,STUDY_STEP=aggregate" "$HERE/study.sbatch")
echo "aggregate: $aggregate"
echo "watch: squeue -u ${USER:-$(id -un)}; logs: pacofr-study-${cells}_<cell>.out, pacofr-study-aggregate-${aggregate}.out;" \
     "table: $STUDY_ROOT/<study name>/table.md (relative to $REPO)"
