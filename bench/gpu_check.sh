#!/usr/bin/env bash
# bench/gpu_check.sh: the first GPU run, prepared. One script, one go (about 8 minutes on one H100/H200), run from
# the repo root of a copy of this tree on a machine that has python3 with torch (CUDA), torchvision, lightning,
# timm, torchmetrics, tensorboard and einops, but neither network nor pacofr's other packages:
#
#   bash bench/gpu_check.sh --prepare .gpu-wheels   # once, HERE (a package index): the missing packages' wheels
#   OUT=/some/folder bash bench/gpu_check.sh        # THERE (or: bash bench/gpu_check.sh /some/folder)
#   bash bench/gpu_check.sh --dry-run /tmp/check    # anywhere, CPU only, tiny sizes (what CI runs)
#
# Each step runs under its own `timeout`, inside one overall deadline (--deadline, default 480 s; a step that
# would start with under 15 s left is skipped, and says so). Each writes one JSON line (step, rc, seconds, status,
# key figures) to <out>/summary.jsonl and to stdout; its output goes to one of a handful of logs beside it
# (at most 8 files: what the device tool brings back). Scratch (data, run folders, the installed wheels) goes to a
# temporary folder, never into <out>. Exit status: 0 when no step failed (skips are not failures), else 1.
#
# Steps, in order of what matters most if time runs out (correctness first, then speed):
#   env          torch, CUDA, cuDNN, GPU, driver (nvidia-smi), package versions                      -> setup.log
#   deps         pip install of the carried wheels into a temporary site folder (no virtualenv: no room)
#                + pacofr on PYTHONPATH (src/ and the repo root) instead of installing it            -> setup.log
#   data         pacofr-prep synth (python -m data_prep.cli synth): 512 faces at 256 px                -> setup.log
#   numerics     the codebook's float32 distances under highest vs high (TF32): time, changed choices -> checks.log
#   nvjpeg       pacofr.data.device_images.nvjpeg_ordering_check: decode vs the training stream        -> checks.log
#   fit          pacofr fit, the demo in bf16-mixed, compiled, device image path, checkpoints, 40 steps -> fit.log
#   fit_resume   the same command again with --resume auto and 80 steps: it must continue from step 40  -> fit.log
#   fsdp         pacofr fit with configs/trainer/fsdp.yaml on 1 GPU, sharded checkpoints, 20 steps      -> fsdp.log
#   fsdp_resume  again to 40 steps: a sharded resume                                                     -> fsdp.log
#   train_step   bench/train_step.py, MAE vs PaCo-FR ViT-B/16, batch 256, bf16, eager then compiled,
#                PaCo-FR through Trainer.fit, host-device syncs (CUDA's listing + the sync sentinel)  -> train_step.txt
#   data_bench   bench/data.py --device cuda (the device image path's decode + augment on the GPU)      -> data.txt
#   fsdp_compare bench/fsdp_compare.py: DDP, FSDP1, FSDP2 on 1 GPU, ViT-B/16 PaCo-FR bf16, step time,
#                peak memory, checkpoint size and save time                                         -> fsdp.log
#
# --dry-run: the same steps on the CPU with tiny sizes (ViT-Ti, batch 4, a few steps, fp32, no compile,
# --device cpu for the benches, fsdp_cpu.yaml on one process); nvjpeg reports "skipped: no CUDA"; deps is skipped
# (this interpreter's packages) unless --wheels is given. tests/bench/test_gpu_check.py runs it.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu
PREPARE_DIR=""
PY_VERSIONS="3.11,3.12"  # the GPU image's python3 (3.12 as last seen there) and this project's 3.11
WHEELS=""
WHEELS_GIVEN=0
DEADLINE_S=""
OUT_ARG=""
# the packages pacofr needs that the GPU image lacks (bench/gpu_check.py CARRIED: the same list)
CARRIED=(jsonargparse docstring-parser typeshed-client webdataset braceexpand simplejpeg)

usage() {
    sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo
    echo "options: --dry-run | --prepare DIR [--python-version 3.11,3.12] | --wheels DIR (default .gpu-wheels)"
    echo "         --deadline SECONDS | OUTDIR (or \$OUT)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry ;;
        --prepare) PREPARE_DIR="${2:?--prepare needs a folder}"; shift ;;
        --python-version) PY_VERSIONS="${2:?--python-version needs e.g. 3.12}"; shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; WHEELS_GIVEN=1; shift ;;
        --deadline) DEADLINE_S="${2:?--deadline needs seconds}"; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) OUT_ARG="$1" ;;
    esac
    shift
done

# The interpreter: $PY, else this checkout's .venv for a dry run (what CI has) and for --prepare (the versions to
# pin are the ones tested here), else python3 (the GPU image's).
if [ -z "${PY:-}" ]; then
    PY=python3
    if { [ "$MODE" = dry ] || [ -n "$PREPARE_DIR" ]; } && [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; fi
fi
export PY

# --- --prepare: the wheels, downloaded here for the GPU image's Python -------------------------------------------
if [ -n "$PREPARE_DIR" ]; then
    mkdir -p "$PREPARE_DIR" || exit 1
    # pinned to the versions this interpreter has (the code is tested with those); unpinned where it has none
    specs=()
    for name in "${CARRIED[@]}"; do
        version="$("$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")"
        specs+=("$name${version:+==$version}")
    done
    # one version of each: older downloads of these packages go first (two versions stop the install there)
    for name in "${CARRIED[@]}"; do
        rm -f "$PREPARE_DIR/${name//-/_}"-*.whl "$PREPARE_DIR/$name"-*.whl
    done
    IFS=, read -r -a versions <<<"$PY_VERSIONS"
    for version in "${versions[@]}"; do
        # --no-deps: their other needs (PyYAML, numpy, typing-extensions) are on the GPU image already, and a
        # second numpy beside the image's torch and OpenCV would be worse than none
        "$PY" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
            --python-version "$version" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            -d "$PREPARE_DIR" "${specs[@]}" || { echo "pip download failed for Python $version" >&2; exit 1; }
    done
    printf '%s\n' "${specs[@]}" >"$PREPARE_DIR/requirements.txt"
    echo "prepared $PREPARE_DIR for Python $PY_VERSIONS: $(du -sh "$PREPARE_DIR" | cut -f1)"
    ls -1 "$PREPARE_DIR"
    exit 0
fi

# --- the run ---------------------------------------------------------------------------------------------------------
OUT="${OUT:-$OUT_ARG}"
if [ -z "$OUT" ]; then
    echo "gpu_check.sh: say where the results go: \$OUT or a folder argument" >&2
    usage >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
[ -n "$WHEELS" ] || WHEELS="$REPO/.gpu-wheels"
[ ! -d "$WHEELS" ] || WHEELS="$(cd "$WHEELS" && pwd)"  # absolute: the steps run from the repo root
[ -n "$DEADLINE_S" ] || { if [ "$MODE" = dry ]; then DEADLINE_S=300; else DEADLINE_S=480; fi; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
SITE="$WORK/site"
mkdir -p "$WORK/logs" "$SITE"
SUMMARY="$OUT/summary.jsonl"
: >"$SUMMARY"
START=$(date +%s)
DEADLINE=$((START + DEADLINE_S))
cd "$REPO" || exit 2
export PYTHONPATH="$SITE:$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export REPO WORK SITE WHEELS MODE OUT
FAILED=()

summarize() {  # NAME RC SECONDS LOG [STATUS]: the step's JSON line, to the summary and stdout
    local line
    if ! line="$("$PY" "$REPO/bench/gpu_check.py" summarize --step "$1" --rc "$2" --seconds "$3" --log "$4" \
        ${5:+--status "$5"} --summary "$SUMMARY" 2>>"$WORK/logs/summarize.err")"; then
        # the helper itself broke (no python?): a line from bash, so the step is still accounted for
        line="{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3, \"status\": \"${5:-rc $2}\", \"summary\": \"helper failed\"}"
        echo "$line" >>"$SUMMARY"
    fi
    echo "$line"
    # a failure: a non-zero exit (a skip has none), or a check that said so
    if [ "$2" != 0 ] || [[ "$line" == *'"status": "failed'* ]]; then FAILED+=("$1"); fi
}

skip() {  # NAME GROUP REASON
    echo "=== $1: skipped: $3" >>"$OUT/$2"
    summarize "$1" 0 0 /dev/null "skipped: $3"
}

step() {  # NAME GROUP TIMEOUT COMMAND...
    local name="$1" group="$2" limit="$3" now left log t0 rc seconds
    shift 3
    now=$(date +%s)
    left=$((DEADLINE - now))
    if [ "$left" -lt 15 ]; then
        skip "$name" "$group" "out of time (${DEADLINE_S} s deadline)"
        return 0
    fi
    [ "$limit" -le $((left - 5)) ] || limit=$((left - 5))
    log="$WORK/logs/$name.log"
    echo "=== $name ($(date -u +%H:%M:%S) UTC, timeout ${limit} s): $*" >>"$OUT/$group"
    t0=$(date +%s.%N)
    # its own session (process group): pacofr fit handles SIGTERM (the preemption checkpoint), so a step killed by
    # `timeout` can leave a fit behind its dead shell; whatever of the group is left when the step returns is killed
    # (a background job of this non-interactive shell is no group leader, so setsid makes $! the group's leader)
    if command -v setsid >/dev/null; then
        setsid --wait timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 &
        local pid=$!
        wait "$pid"
        rc=$?
        kill -KILL -- "-$pid" 2>/dev/null
    else
        timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
        rc=$?
    fi
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    cat "$log" >>"$OUT/$group"
    echo "=== $name: rc $rc, ${seconds} s" >>"$OUT/$group"
    summarize "$name" "$rc" "$seconds" "$log"
}

# --- the steps' commands (functions run by `timeout bash -c NAME`: exported) ---------------------------------------
run() {  # the command line into the log, then the command
    echo "+ $*"
    "$@"
}

step_env() {
    "$PY" "$REPO/bench/gpu_check.py" env || return
    echo "mode: $MODE; repo: $REPO; commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not on this machine"; fi
}

step_deps() {
    local imports="import jsonargparse, docstring_parser, typeshed_client, webdataset, braceexpand, simplejpeg"
    if [ ! -f "$WHEELS/requirements.txt" ]; then
        echo "no $WHEELS/requirements.txt: run 'bash bench/gpu_check.sh --prepare $WHEELS' on a machine with a" \
            "package index first, and carry that folder with the tree"
        "$PY" -c "$imports" && { echo "(but every package imports: going on)"; return 0; }
        return 3
    fi
    # --target: a site folder of this run (first on PYTHONPATH); the image's own packages stay as they are
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-index --no-deps --no-compile \
        --no-cache-dir --target "$SITE" --find-links "$WHEELS" -r "$WHEELS/requirements.txt" || return
    "$PY" -c "$imports; import pacofr.cli, data_prep.cli, pacofr, jsonargparse, webdataset, simplejpeg
import json; print(json.dumps({'gpu_check': 'deps', 'pacofr_from': pacofr.__file__, 'carried_from': jsonargparse.__file__,
    'jsonargparse': jsonargparse.__version__,
    'webdataset': webdataset.__version__, 'simplejpeg': simplejpeg.__version__}))"
}

step_data() {
    local n=512 size=256 workers=8
    [ "$MODE" = dry ] && n=48 size=96 workers=1
    # pacofr-prep synth, run from the tree (nothing installed there)
    run "$PY" -m data_prep.cli synth --out "$WORK/faces" --n "$n" --size "$size" --seed 0 --val-fraction 0.25 \
        --shard-size 128 --workers "$workers" --quiet || return
    echo "{\"gpu_check\": \"data\", \"images\": $n, \"size\": $size, \"root\": \"$WORK/faces\"}"
}

step_numerics() {
    if [ "$MODE" = dry ]; then
        "$PY" "$REPO/bench/gpu_check.py" numerics --device cpu --rows 512 --repeats 1
    else
        "$PY" "$REPO/bench/gpu_check.py" numerics --device cuda
    fi
}

step_nvjpeg() {
    "$PY" "$REPO/bench/gpu_check.py" nvjpeg --device cuda  # "skipped: no CUDA" on a CPU
}

# pacofr fit as a user runs it: the demo config with the GPU settings as overrides (small and quick: what is
# checked is the path, bf16 + compile + the device image path + checkpoints + --resume auto, not the model)
fit_args() {  # RUN_DIR MAX_STEPS EVERY
    local common=(--config configs/pretrain/tiny.yaml --config configs/pretrain/method/pacofr.yaml
        --config configs/pretrain/demo.yaml --data.root "$WORK/faces" --run_dir "$1" --resume auto
        --data.images_on_device true --trainer.max_steps "$2" --checkpoint.every_n_train_steps "$3"
        --trainer.val_check_interval "$3" --trainer.limit_val_batches 2 --trainer.enable_progress_bar false)
    if [ "$MODE" = dry ]; then
        echo "${common[@]}" --data.batch_size 4 --data.num_workers 0 --data.image_size 64 --data.shuffle_buffer 16 \
            --trainer.log_every_n_steps 1
    else
        echo "${common[@]}" --data.batch_size 64 --data.num_workers 6 --trainer.log_every_n_steps 10
    fi
}

step_fit() {  # MAX_STEPS STARTS
    local every=20 device=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed
        --model.compile true)
    [ "$MODE" = dry ] && every=2 device=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true
        --model.compile false)
    # shellcheck disable=SC2046  # fit_args prints words without spaces inside them
    run "$PY" -m pacofr.cli fit $(fit_args "$WORK/fit" "$1" "$every") "${device[@]}" 2>&1 | tee "$WORK/fit_$2.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || return "$rc"
    "$PY" "$REPO/bench/gpu_check.py" runcheck "$WORK/fit" --expect-step "$1" --expect-starts "$2" \
        --log "$WORK/fit_$2.log"
}

step_fsdp() {  # MAX_STEPS STARTS
    local every=10 preset=configs/trainer/fsdp.yaml
    [ "$MODE" = dry ] && every=2 preset=configs/trainer/fsdp_cpu.yaml
    # shellcheck disable=SC2046
    run "$PY" -m pacofr.cli fit $(fit_args "$WORK/fsdp" "$1" "$every") --config "$preset" --trainer.devices 1 2>&1 |
        tee "$WORK/fsdp_$2.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || return "$rc"
    "$PY" "$REPO/bench/gpu_check.py" runcheck "$WORK/fsdp" --expect-step "$1" --expect-starts "$2" --sharded \
        --log "$WORK/fsdp_$2.log"
}

step_train() {
    if [ "$MODE" = dry ]; then
        OMP_NUM_THREADS=1 run "$PY" bench/train_step.py --device cpu --size tiny --batch 4 --steps 2 --warmup 1 \
            --no-compile --sync-debug --threads 1 --no-progress-bar
    else
        # eager then compiled rows (MAE, PaCo-FR), then the compiled PaCo-FR step through Trainer.fit; the syncs
        # of one step of each (CUDA's sync debug mode and pacofr's sync sentinel)
        run "$PY" bench/train_step.py --size base --batch 256 --peak 790 --steps 10 --warmup 3 --compile-warmup 2 \
            --sync-debug --no-progress-bar
    fi
}

step_data_bench() {
    if [ "$MODE" = dry ]; then
        run "$PY" bench/data.py --root "$WORK/faces" --device cpu --images 16 --batch 4 --image-size 64 \
            --shuffle-buffer 8 --stage-images 8 --decode-images 8 --decode-repeats 1 --gpu-rate 1000
        return
    fi
    # feed rate: the compiled PaCo-FR step just measured, else the 4,600 img/s target of docs/scaling.md
    local rate
    rate="$("$PY" -c "import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
print(next((r['img_per_s'] for r in rows if r.get('row') == 'pacofr compiled'), 4600))" \
        "$WORK/logs/train_step.log" 2>/dev/null || echo 4600)"
    run "$PY" bench/data.py --root "$WORK/faces" --device cuda --workers 10 --images 512 --gpu-rate "$rate"
}

step_fsdp_compare() {
    if [ "$MODE" = dry ]; then
        OMP_NUM_THREADS=1 run "$PY" bench/fsdp_compare.py --accelerator cpu --devices 1 --size tiny --steps 3 \
            --batch-size 4 --image-size 64 --faces "$WORK/faces" --work "$WORK/fsdp_compare" --timeout 120
    else
        run "$PY" bench/fsdp_compare.py --accelerator gpu --devices 1 --size vit_b16 --steps 20 --batch-size 64 \
            --image-size 224 --faces "$WORK/faces" --work "$WORK/fsdp_compare" --timeout 100
    fi
}

export -f run step_env step_deps step_data step_numerics step_nvjpeg fit_args step_fit step_fsdp step_train \
    step_data_bench step_fsdp_compare

# --- the run (one function, called on the last line: bash has read the whole file before the first step starts,
# so editing or updating the script while it runs cannot change what it does) -----------------------------------
run_steps() {
    local steps name total line
    echo "gpu_check: mode $MODE, deadline ${DEADLINE_S} s, results in $OUT, scratch in $WORK"
    step env setup.log 60 bash -c step_env
    if [ "$MODE" = dry ] && [ "$WHEELS_GIVEN" = 0 ]; then
        skip deps setup.log "dry run: this interpreter's packages ($PY)"
    else
        step deps setup.log 120 bash -c step_deps
    fi
    step data setup.log 120 bash -c step_data
    step numerics checks.log 60 bash -c step_numerics
    step nvjpeg checks.log 60 bash -c step_nvjpeg
    if [ -f "$WORK/faces/_info.json" ]; then
        if [ "$MODE" = dry ]; then steps=(2 4 2 4); else steps=(40 80 20 40); fi
        step fit fit.log 150 bash -c "step_fit ${steps[0]} 1"
        step fit_resume fit.log 120 bash -c "step_fit ${steps[1]} 2"
        step fsdp fsdp.log 120 bash -c "step_fsdp ${steps[2]} 1"
        step fsdp_resume fsdp.log 120 bash -c "step_fsdp ${steps[3]} 2"
    else
        for name in fit fit_resume fsdp fsdp_resume; do
            skip "$name" fit.log "no data (the data step failed or did not run)"
        done
    fi
    step train_step train_step.txt 240 bash -c step_train
    if [ -f "$WORK/faces/_info.json" ]; then
        step data_bench data.txt 120 bash -c step_data_bench
    else
        skip data_bench data.txt "no data (the data step failed or did not run)"
    fi
    if [ -f "$WORK/faces/_info.json" ]; then
        step fsdp_compare fsdp.log 330 bash -c step_fsdp_compare
    else
        skip fsdp_compare fsdp.log "no data (the data step failed or did not run)"
    fi

    total=$(($(date +%s) - START))
    line="{\"step\": \"total\", \"rc\": ${#FAILED[@]}, \"seconds\": $total, \"mode\": \"$MODE\", \"failed\": \"${FAILED[*]-}\"}"
    echo "$line" | tee -a "$SUMMARY"
    rm -rf "$WORK"
    [ "${#FAILED[@]}" = 0 ]
}

run_steps
exit $?
