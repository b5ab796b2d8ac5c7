#!/bin/bash
# Stop 19: SmolLM2's acceptance contexts from before stop 17 that have no copy split (2K seeds
# 0,1,4-7, then 4K seed 0), rerun with the split into the same cells file. The code is
# deterministic: the reruns are expected to repeat the earlier cells' numbers and add the split.
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
OUT=docs/results/issue6/split
M=full,am,default,snapkv,h2o,window
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models smollm2-135m --n-tokens 2048 --seeds 0,1,4,5,6,7
run --models smollm2-135m --n-tokens 4096 --seeds 0
echo "=== done $(date -u +%H:%M:%S)"
