#!/bin/bash
# Stop 20: lane B of run20b.sh was stopped at 08:07 UTC after Gemma-3's 4K context, to free a core
# for a tuning run of option exact="heavy" (tuning contexts only); that run ended at 08:19 and
# lane B's SmolLM2 part goes on here (same cells as run20.sh; what counts is unchanged).
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
L=docs/results/issue6/long
M=full,am,default,snapkv,h2o,window
S=0,1,4,5,6,7,8,9,10,11,12,13
run() { out=$1; shift; echo "=== $(date -u +%H:%M:%S) $out $*"; python -m pyllamaam eval --out $out --no-progress --continuation 256 --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run $L/b --models smollm2-135m --n-tokens 2048 --seeds $S
run $L/b --models smollm2-135m --n-tokens 4096 --seeds 0
echo "=== done $(date -u +%H:%M:%S)"
