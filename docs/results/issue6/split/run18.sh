#!/bin/bash
# Stop 18: 4 more contexts per model (seeds 8 and 9 at ~1K and ~2K tokens, never used for tuning or
# for choosing a candidate), the default (am-op3-recur1: recurring=1) against uniform AM and the
# eviction baselines, into the same cells file as run.sh. Decided before any of these cells ran:
# all 4 count, whatever they say, giving 17 contexts per (model, ratio); no further contexts are
# added in stop 18. The script resumes: cells already in cells.jsonl are skipped.
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
OUT=docs/results/issue6/split
M=full,am,am-op3-recur1,snapkv,h2o,window
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models gemma3-270m --n-tokens 1024,2048 --seeds 8,9
run --models smollm2-135m --n-tokens 1024,2048 --seeds 8,9
echo "=== done $(date -u +%H:%M:%S)"
