#!/usr/bin/env bash
# The course's GPU check, in one command, on a machine with a CUDA GPU, a Python and a CUDA
# build of torch in it: nothing of the course needs to be installed first.
#   0. set-up (benchmarks/gpu_check_setup.py): installs into that Python, never replacing its
#      torch, the package from this checkout (editable, --no-deps) and the few packages the
#      steps need, from local wheels in $GPU_CHECK_WHEELS or .whl/ when that folder exists
#      (machines without network), else from the package index; records the environment
#      (environment.txt, pip-freeze.txt); then checks that Tiny Shakespeare and GPT-2's BPE
#      files are on the machine ($NANOGPT_DATA_DIR or the cache, $TIKTOKEN_CACHE_DIR) and
#      stops, before any step, if they are not;
#   1. tests: the unit tests (not slow, not book) on the GPU machine, the CUDA-only ones included;
#   2. bench: the benchmark, saved as a record (python -m nanogpt bench --save);
#   3. train: the command line's train on the GPU, short (300 steps), then a sample from its checkpoint;
#   4. chapter06: chapter 06 executed at full size (NANOGPT_QUICK unset) as a reader would run it in
#      Colab: a lone copy in an empty folder (benchmarks/execute_notebook.py, nbclient);
#   5. chapter07: chapter 07 the same (its speed-up ladder runs on the real GPT-2 124M shape on a GPU).
# Each step runs under benchmarks/run_step.py: a time limit, then SIGINT, then everything the step
# started is killed (a chapter's kernel, which has a session of its own, included). The set-up and
# the steps together stay inside GPU_CHECK_BUDGET_S seconds (default 540: nine minutes on an H100).
# Logs go to --logs DIR (default out/gpu_check): summary.txt (each step's status and wall time),
# one log per step, the environment, the executed chapters, and the records the steps wrote (in
# DIR/records, via NANOGPT_RESULTS_DIR: copy the ones to keep into nanogpt/course/records).
# --only STEP[,STEP...] runs a subset, in the order above; --chapters DIR takes the chapter
# notebooks from DIR instead of chapters/; --setup-only stops after the set-up (no GPU needed;
# run it first where downloading the packages from the index may take longer than the set-up's 45 s).
# PYTHON picks the interpreter (default .venv/bin/python, else python3); GPU_CHECK_GRACE_S the
# seconds between a step's SIGINT and its kill (15); GPU_CHECK_REQUIRE_GPU=0 runs without a GPU
# (to try the script itself: the steps that need CUDA then fail).
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--setup-only] [--logs DIR] [--only STEPS] [--chapters DIR]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$PWD"
cd "$ROOT"

DRY_RUN=0
SETUP_ONLY=0
LOGS="out/gpu_check"
ONLY=""
CHAPTERS="chapters"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --setup-only) SETUP_ONLY=1 ;;
        --logs) LOGS="${2:?--logs needs a folder}"; shift ;;
        --only) ONLY="${2:?--only needs step names, e.g. tests,bench}"; shift ;;
        --chapters) CHAPTERS="${2:?--chapters needs a folder}"; shift
                    case "$CHAPTERS" in /*) ;; *) CHAPTERS="$CALLER_DIR/$CHAPTERS" ;; esac ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (use --dry-run, --setup-only, --logs DIR, --only STEPS or --chapters DIR)" >&2
           exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
GRACE_S="${GPU_CHECK_GRACE_S:-15}"
SETUP_S=45
CKPT_DIR="${TMPDIR:-/tmp}/nanogpt_gpu_check"  # checkpoints are large: kept out of the logs
case "$LOGS" in /*) ;; *) LOGS="$ROOT/$LOGS" ;; esac

# Local data and tokenizer files, as the tests use them (offline machines have no other source).
for shared in "$ROOT/../shared/data" "$ROOT/shared/data"; do
    if [ -d "$shared" ]; then
        export NANOGPT_DATA_DIR="${NANOGPT_DATA_DIR:-$shared}"
        export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$shared/tiktoken}"
        break
    fi
done
unset NANOGPT_QUICK  # full size: the point is the GPU's real outputs
export PYTHONUNBUFFERED=1
export NANOGPT_RESULTS_DIR="$LOGS/records"  # records land beside the logs, not in the package

# name | seconds allowed | command
EXECUTE="$PYTHON $ROOT/benchmarks/execute_notebook.py"
STEPS=(
    "tests|50|$PYTHON -m pytest -o addopts= -p no:cacheprovider -q -ra -n 8 --dist loadfile -m 'not slow and not book' tests"
    "bench|65|$PYTHON -m nanogpt bench --device cuda --save"
    "train|40|$PYTHON -m nanogpt train --preset shakespeare-char --device cuda --max-iters 300 --out $CKPT_DIR/shakespeare-char && $PYTHON -m nanogpt sample --checkpoint $CKPT_DIR/shakespeare-char --device cuda --max-new-tokens 200"
    "chapter06|170|$EXECUTE $CHAPTERS/06_shakespeare_run.ipynb $LOGS/06_shakespeare_run.ipynb"
    "chapter07|170|$EXECUTE $CHAPTERS/07_gpu_training.ipynb $LOGS/07_gpu_training.ipynb"
)
if [ -n "$ONLY" ]; then
    known=" $(for step in "${STEPS[@]}"; do printf '%s ' "${step%%|*}"; done)"
    for name in ${ONLY//,/ }; do
        if [[ "$known" != *" $name "* ]]; then
            echo "gpu_check: unknown step '$name' in --only (steps:$known)" >&2; exit 2
        fi
    done
    kept=()
    for step in "${STEPS[@]}"; do
        [[ ",$ONLY," == *",${step%%|*},"* ]] && kept+=("$step")
    done
    STEPS=("${kept[@]}")
fi
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then wheels="$GPU_CHECK_WHEELS"; else wheels="$ROOT/.whl"; fi
if [ -d "$wheels" ]; then wheel_source="the local wheels in $wheels"; else wheel_source="the package index (no $wheels)"; fi

if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run; would run, in $ROOT, with NANOGPT_QUICK unset,"
    echo "  NANOGPT_DATA_DIR=${NANOGPT_DATA_DIR:-<unset>} TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-<unset>}:"
    echo "  set-up (timeout ${SETUP_S} s): install what is missing into $PYTHON from $wheel_source, torch kept;"
    echo "    record the environment; check the data"
    total=$SETUP_S
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit cmd <<<"$step"
        echo "  step $name (timeout ${limit} s): $cmd"
        total=$((total + limit))
    done
    echo "gpu_check: total time allowed ${BUDGET_S} s (the set-up's and the steps' limits add up to ${total} s); logs in $LOGS,"
    echo "  records in $NANOGPT_RESULTS_DIR"
    exit 0
fi

start=$(date +%s)  # the budget counts from here: the set-up is part of the nine minutes

# Fail fast where there is no torch or no GPU: nothing below can run.
if ! gpu="$("$PYTHON" -c 'import sys
try:
    import torch
except ImportError as exc:
    sys.exit(f"no torch in {sys.executable} ({exc}): install a CUDA build of torch first, the check never installs torch")
if not torch.cuda.is_available():
    sys.exit(f"no CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False)")
print(torch.cuda.get_device_name())' 2>&1)"; then
    reason="${gpu##*$'\n'}"
    if [[ "$reason" == "no torch"* ]]; then
        echo "gpu_check: error: $reason" >&2; exit 2
    fi
    if [ "$SETUP_ONLY" = 0 ] && [ "${GPU_CHECK_REQUIRE_GPU:-1}" != 0 ]; then
        echo "gpu_check: error: $reason. This check needs a machine with an NVIDIA GPU;" \
             "run benchmarks/gpu_check.sh --dry-run to see its steps." >&2
        exit 2
    fi
    gpu="no GPU ($reason)"
fi

mkdir -p "$LOGS/records" "$CKPT_DIR"
summary="$LOGS/summary.txt"
echo "gpu_check on $gpu, $(date -u +%Y-%m-%dT%H:%M:%SZ), python $PYTHON, budget ${BUDGET_S} s" | tee "$summary"

RUN_STEP="$PYTHON $ROOT/benchmarks/run_step.py --grace $GRACE_S"
verdict_of() {  # exit status, seconds allowed, log -> the words summary.txt gives a step
    case $1 in
        0) echo "ok" ;;
        124) echo "TIMED OUT after $2 s (the step and everything it started were killed)" ;;
        130) echo "INTERRUPTED" ;;
        *) echo "FAILED (exit $1; see $3)" ;;
    esac
}

# 0. Set-up: the package and what the steps need, the environment's record, the data.
t0=$(date +%s)
$RUN_STEP --timeout "$SETUP_S" --log "$LOGS/setup.log" -- "$PYTHON" "$ROOT/benchmarks/gpu_check_setup.py" install
rc=$?
"$PYTHON" "$ROOT/benchmarks/gpu_check_setup.py" record "$LOGS" >>"$LOGS/setup.log" 2>&1
echo "step setup: $(verdict_of $rc "$SETUP_S" "$LOGS/setup.log"), took $(($(date +%s) - t0)) s;" \
     "environment in $LOGS/environment.txt" | tee -a "$summary"
if [ $rc -ne 0 ]; then
    grep '^gpu_check: error' "$LOGS/setup.log" >&2
    echo "gpu_check: error: the set-up failed, nothing was run; see $LOGS/setup.log" | tee -a "$summary" >&2
    exit 2
fi
if [ "$SETUP_ONLY" = 1 ]; then
    echo "gpu_check: set-up only (--setup-only): no data check, no steps" | tee -a "$summary"
    exit 0
fi
t0=$(date +%s)
if ! "$PYTHON" "$ROOT/benchmarks/gpu_check_setup.py" data >"$LOGS/data.log" 2>&1; then
    echo "step data: MISSING, took $(($(date +%s) - t0)) s; nothing was run" >>"$summary"
    sed 's/^/  /' "$LOGS/data.log" >>"$summary"
    cat "$LOGS/data.log" >&2
    exit 2
fi
echo "step data: ok, took $(($(date +%s) - t0)) s ($(tr '\n' ';' <"$LOGS/data.log"))" | tee -a "$summary"

failed=0
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    left=$((BUDGET_S - ($(date +%s) - start)))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        echo "step $name: skipped, no time left in the ${BUDGET_S} s budget" | tee -a "$summary"
        failed=1
        continue
    fi
    echo "step $name (timeout ${limit} s): $cmd"
    t0=$(date +%s)
    $RUN_STEP --timeout "$limit" --log "$LOGS/$name.log" -- bash -c "$cmd"
    rc=$?
    [ $rc -ne 0 ] && failed=1
    echo "step $name: $(verdict_of $rc "$limit" "$LOGS/$name.log"), took $(($(date +%s) - t0)) s" | tee -a "$summary"
    if [ $rc -eq 130 ]; then
        echo "gpu_check: interrupted; the steps after $name were not run" | tee -a "$summary"
        break
    fi
done
echo "gpu_check: all steps took $(($(date +%s) - start)) s" | tee -a "$summary"

echo "gpu_check: logs in $LOGS; records written:" | tee -a "$summary"
ls "$LOGS/records" 2>/dev/null | sed 's/^/  /' | tee -a "$summary"
if [ -f "$CKPT_DIR/shakespeare-char/summary.json" ]; then
    cp "$CKPT_DIR/shakespeare-char/summary.json" "$LOGS/train_summary.json"
fi
exit $failed
