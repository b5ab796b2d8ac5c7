#!/bin/bash
cd /work/main
source .venv/bin/activate
OUT=/tmp/grid/out
M=full,am,am-snapkv,am-context,snapkv,h2o,window,random
R=2,5,10,20,50
run() { echo "=== $(date -u +%H:%M:%S) $*"; python -m pyllamaam eval --out $OUT --no-progress --ratios $R --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
run --models smollm2-135m --n-tokens 1024,2048 --seeds 0,1
run --models gemma3-270m --n-tokens 1024,2048 --seeds 0
run --models smollm2-135m --n-tokens 4096 --seeds 0
run --models gemma3-270m --n-tokens 1024,2048 --seeds 0,1
run --models smollm2-135m --n-tokens 4096 --seeds 0,1
echo "=== done $(date -u +%H:%M:%S)"
