#!/bin/bash
# Issue 6 acceptance in the eval harness: the default (Session.compact's defaults: uniform budgets, repeat
# queries, 3 on-policy layer groups) vs uniform-budget AM (one group) vs the eviction baselines, 10x and 20x, both models. Run from the repo root,
# alone on the machine; resumable (finished cells are skipped).
set -e
source .venv/bin/activate
OUT=docs/results/issue6
M=full,am,default,am-budgets,am-selfstudy,am-mix,snapkv,h2o,window
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models smollm2-135m --n-tokens 1024,2048 --seeds 0,1
run --models gemma3-270m --n-tokens 1024,2048 --seeds 0,1
run --models smollm2-135m --n-tokens 4096 --seeds 0
run --models gemma3-270m --n-tokens 4096 --seeds 0
# stop 14: 4 more contexts per model (seeds 4 and 5, never used for tuning), the default against
# uniform AM and the eviction baselines only
M=full,am,default,snapkv,h2o,window
run --models gemma3-270m --n-tokens 1024,2048 --seeds 4,5
run --models smollm2-135m --n-tokens 1024,2048 --seeds 4,5
# stop 15: the candidate am-op3-q8k (on-policy refits fitted on 4x the query rows, max_queries=8192),
# chosen on the tuning seeds (tune/sweep13.py), on every acceptance context
M=full,am-op3-q8k
run --models gemma3-270m --n-tokens 1024,2048 --seeds 0,1,4,5
run --models gemma3-270m --n-tokens 4096 --seeds 0
run --models smollm2-135m --n-tokens 1024,2048 --seeds 0,1,4,5
run --models smollm2-135m --n-tokens 4096 --seeds 0
# stop 16: 4 more contexts per model (seeds 6 and 7, never used for tuning or for choosing a
# candidate), the default against uniform AM and the eviction baselines: 13 contexts per cell
M=full,am,default,snapkv,h2o,window
run --models gemma3-270m --n-tokens 1024,2048 --seeds 6,7
run --models smollm2-135m --n-tokens 1024,2048 --seeds 6,7
# stop 16: the stop-15 candidate am-op3-q8k on the same 4 new contexts, to compare it on all 13
M=full,am-op3-q8k
run --models gemma3-270m --n-tokens 1024,2048 --seeds 6,7
run --models smollm2-135m --n-tokens 1024,2048 --seeds 6,7
echo "=== done $(date -u +%H:%M:%S)"
