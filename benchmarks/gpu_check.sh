#!/usr/bin/env bash
# The course's GPU check, in one command, on a machine with a CUDA GPU:
#   1. chapter 06's full-size run from the command line (python -m nanogpt train, shakespeare-char);
#   2. the benchmark, saved as a record (python -m nanogpt bench --save);
#   3. chapter 06 re-executed in place, full size (NANOGPT_QUICK unset), so its outputs are the GPU's;
#   4. chapter 07 the same (its speed-up ladder runs on the real GPT-2 124M shape on a GPU).
# Each step runs under `timeout` and reports how long it took; all of them together stay inside
# GPU_CHECK_BUDGET_S seconds (default 525: under 9 minutes on an H100). Logs go to --logs DIR
# (default out/gpu_check), with results.tar.gz holding the notebooks and records the steps wrote.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--logs DIR]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN=0
LOGS="out/gpu_check"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --logs) LOGS="${2:?--logs needs a folder}"; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (use --dry-run or --logs DIR)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-525}"
CKPT_DIR="${TMPDIR:-/tmp}/nanogpt_gpu_check"  # checkpoints are large: kept out of the logs

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

# name | seconds allowed | command
STEPS=(
    "train|140|$PYTHON -m nanogpt train --preset shakespeare-char --device cuda --out $CKPT_DIR/shakespeare-char"
    "bench|60|$PYTHON -m nanogpt bench --device cuda --save"
    "chapter06|150|$PYTHON -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 chapters/06_shakespeare_run.ipynb"
    "chapter07|175|$PYTHON -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 chapters/07_gpu_training.ipynb"
)

if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run; would run, in $ROOT, with NANOGPT_QUICK unset,"
    echo "  NANOGPT_DATA_DIR=${NANOGPT_DATA_DIR:-<unset>} TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-<unset>}:"
    total=0
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit cmd <<<"$step"
        echo "  step $name (timeout ${limit} s): $cmd"
        total=$((total + limit))
    done
    echo "gpu_check: total time allowed ${BUDGET_S} s (the steps' limits add up to ${total} s); logs in $LOGS"
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

mkdir -p "$LOGS" "$CKPT_DIR"
marker="$(mktemp)"  # files newer than this are what the steps wrote
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
    timeout --signal=INT --kill-after=15 "$limit" $cmd >"$LOGS/$name.log" 2>&1
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

# The notebooks and records the steps rewrote, in one file (checkpoints and caches left out).
find . \( -path ./.git -o -path ./.venv -o -path "./$LOGS" -o -path ./out -o -name __pycache__ \
          -o -name .ipynb_checkpoints -o -name .pytest_cache \) -prune -o \
       -type f -newer "$marker" ! -name '*.pt' -print >"$marker.list"
tar -czf "$LOGS/results.tar.gz" -T "$marker.list"
echo "gpu_check: logs in $LOGS; results.tar.gz holds $(wc -l <"$marker.list") files the steps wrote:"
sed 's/^/  /' "$marker.list"
rm -f "$marker" "$marker.list"
if [ -f "$CKPT_DIR/shakespeare-char/summary.json" ]; then
    cp "$CKPT_DIR/shakespeare-char/summary.json" "$LOGS/train_summary.json"
fi
exit $failed
