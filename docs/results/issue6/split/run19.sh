#!/bin/bash
# Stop 19: 8 more contexts per model (seeds 10-13 at ~1K and ~2K tokens, never used for tuning or
# for choosing a candidate): the default as it stands (the stop-16 default: on-policy refits,
# recurring=0) against uniform AM and the eviction baselines, into the same cells file as
# run18.sh. Decided before any of these cells ran: all 8 count, whatever they say, giving 25
# contexts per (model, ratio); no method or option is chosen on them, and no further contexts are
# added in stop 19. The script resumes: cells already in cells.jsonl are skipped.
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
OUT=docs/results/issue6/split
M=full,am,default,snapkv,h2o,window
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models gemma3-270m --n-tokens 1024,2048 --seeds 10,11,12,13
run --models smollm2-135m --n-tokens 1024,2048 --seeds 10,11,12,13
echo "=== done $(date -u +%H:%M:%S)"
