#!/usr/bin/env bash
# The course's GPU check, in one command, on a machine with a CUDA GPU:
#   1. tests: the unit tests (not slow, not book) on the GPU machine, the CUDA-only ones included;
#   2. bench: the benchmark, saved as a record (python -m nanogpt bench --save);
#   3. train: the command line's train on the GPU, short (300 steps), then a sample from its checkpoint;
#   4. chapter06: chapter 06 executed at full size (NANOGPT_QUICK unset) as a reader would run it in
#      Colab: a lone copy in an empty folder (benchmarks/execute_notebook.py, nbclient);
#   5. chapter07: chapter 07 the same (its speed-up ladder runs on the real GPT-2 124M shape on a GPU).
# Each step runs under `timeout` and reports how long it took; all of them together stay inside
# GPU_CHECK_BUDGET_S seconds (default 525: under 9 minutes on an H100). Logs go to --logs DIR
# (default out/gpu_check): one log per step, the executed chapters, and the records the steps
# wrote (in DIR/records, via NANOGPT_RESULTS_DIR: copy the ones to keep into nanogpt/course/records).
# --only STEP[,STEP...] runs a subset, in the order above.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--logs DIR] [--only STEPS]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN=0
LOGS="out/gpu_check"
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --logs) LOGS="${2:?--logs needs a folder}"; shift ;;
        --only) ONLY="${2:?--only needs step names, e.g. tests,bench}"; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (use --dry-run, --logs DIR or --only STEPS)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-525}"
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
    "tests|60|$PYTHON -m pytest -o addopts= -p no:cacheprovider -q -ra -n 8 --dist loadfile -m 'not slow and not book' tests"
    "bench|60|$PYTHON -m nanogpt bench --device cuda --save"
    "train|40|$PYTHON -m nanogpt train --preset shakespeare-char --device cuda --max-iters 300 --out $CKPT_DIR/shakespeare-char && $PYTHON -m nanogpt sample --checkpoint $CKPT_DIR/shakespeare-char --device cuda --max-new-tokens 200"
    "chapter06|190|$EXECUTE chapters/06_shakespeare_run.ipynb $LOGS/06_shakespeare_run.ipynb"
    "chapter07|190|$EXECUTE chapters/07_gpu_training.ipynb $LOGS/07_gpu_training.ipynb"
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

if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run; would run, in $ROOT, with NANOGPT_QUICK unset,"
    echo "  NANOGPT_DATA_DIR=${NANOGPT_DATA_DIR:-<unset>} TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-<unset>}:"
    total=0
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit cmd <<<"$step"
        echo "  step $name (timeout ${limit} s): $cmd"
        total=$((total + limit))
    done
    echo "gpu_check: total time allowed ${BUDGET_S} s (the steps' limits add up to ${total} s); logs in $LOGS,"
    echo "  records in $NANOGPT_RESULTS_DIR"
    exit 0
fi

# Fail fast where there is no GPU: nothing below can run.
if ! gpu="$("$PYTHON" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)")
print(torch.cuda.get_device_name())' 2>&1)"; then
    echo "gpu_check: error: no CUDA GPU: ${gpu##*$'\n'}. This check needs a machine with an NVIDIA GPU;" \
         "run benchmarks/gpu_check.sh --dry-run to see its steps." >&2
    exit 2
fi

mkdir -p "$LOGS/records" "$CKPT_DIR"
start=$(date +%s)
summary="$LOGS/summary.txt"
echo "gpu_check on $gpu, $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET_S} s" | tee "$summary"
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
    # SIGINT first: the trainer saves a checkpoint and exits cleanly; KILL 15 s later if needed.
    timeout --signal=INT --kill-after=15 "$limit" bash -c "$cmd" >"$LOGS/$name.log" 2>&1
    rc=$?
    took=$(($(date +%s) - t0))
    case $rc in
        0) verdict="ok" ;;
        124|130|137) verdict="TIMED OUT after ${limit} s"; failed=1 ;;
        *) verdict="FAILED (exit $rc; see $LOGS/$name.log)"; failed=1 ;;
    esac
    echo "step $name: $verdict, took ${took} s" | tee -a "$summary"
done
echo "gpu_check: all steps took $(($(date +%s) - start)) s" | tee -a "$summary"

echo "gpu_check: logs in $LOGS; records written:" | tee -a "$summary"
ls "$LOGS/records" 2>/dev/null | sed 's/^/  /' | tee -a "$summary"
if [ -f "$CKPT_DIR/shakespeare-char/summary.json" ]; then
    cp "$CKPT_DIR/shakespeare-char/summary.json" "$LOGS/train_summary.json"
fi
exit $failed
