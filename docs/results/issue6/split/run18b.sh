#!/bin/bash
# Stop 18: the stop-16 default (am-op3: on-policy refits, recurring=0) on the 4 new contexts of
# run18.sh, to check stop 17's change (recurring=1) on contexts it was not chosen on.
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
OUT=docs/results/issue6/split
M=full,am-op3
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models gemma3-270m --n-tokens 1024,2048 --seeds 8,9
run --models smollm2-135m --n-tokens 1024,2048 --seeds 8,9
echo "=== done $(date -u +%H:%M:%S)"
