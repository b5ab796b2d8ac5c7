#!/bin/bash
# Stop 17: the 13 acceptance contexts per model again, with the continuation's ΔNLL split into
# copied and fresh tokens (fidelity.copied_targets) and kept per token. Same methods, same
# contexts and seeds as docs/results/issue6/run.sh (stops 12-16); the code of the methods is
# unchanged since stop 16. The script resumes: cells already in cells.jsonl are skipped.
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
OUT=docs/results/issue6/split
M=full,am,default,snapkv,h2o,window
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models gemma3-270m --n-tokens 1024,2048 --seeds 0,1,4,5,6,7
# the stop-17 candidate am-op3-recur1 (option recurring=1: the exact share beyond keep_last holds
# the context's repeated text), chosen on the tuning seeds (tune/sweep15.py), on the same contexts
M=am-op3-recur1
run --models gemma3-270m --n-tokens 1024,2048 --seeds 0,1,4,5,6,7
run --models gemma3-270m --n-tokens 4096 --seeds 0
run --models smollm2-135m --n-tokens 1024,2048 --seeds 0,1,4,5,6,7
run --models smollm2-135m --n-tokens 4096 --seeds 0
# the rest of the split for the baselines. Since stop 17 "default" means recurring=1 (the rows
# above ran before that, with recurring=0): to redo them as they were, ask for am-op3 instead (their ΔNLL and answers are the same as run.sh's to the
# printed digits: the split only adds the per-token record)
M=full,am,default,snapkv,h2o,window
run --models gemma3-270m --n-tokens 4096 --seeds 0
run --models smollm2-135m --n-tokens 1024,2048 --seeds 0,1,4,5,6,7
run --models smollm2-135m --n-tokens 4096 --seeds 0
echo "=== done $(date -u +%H:%M:%S)"
