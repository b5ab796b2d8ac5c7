#!/bin/bash
# Stop 20: run20.sh's cells in two processes at once (one process left one of the 2 cores mostly
# idle: load 1.4). Same cells, same code; what counts is unchanged (run20.sh's header). run20.sh
# was stopped at 07:08 UTC after Gemma-3's 1K seeds 0-9 (88 cells, kept). Lane A writes to
# long/cells.jsonl, lane B to long/b/cells.jsonl; the analysis reads both. Cell seconds from two
# processes sharing 2 cores are not cost numbers (quality is unaffected: the code is deterministic).
set -e
cd "$(dirname "$0")/../../../.."
source .venv/bin/activate
L=docs/results/issue6/long
M=full,am,default,snapkv,h2o,window
S=0,1,4,5,6,7,8,9,10,11,12,13
run() { out=$1; shift; echo "=== $(date -u +%H:%M:%S) $out $*"; python -m pyllamaam eval --out $out --no-progress --continuation 256 --ratios 10,20 --methods $M "$@" 2>&1 | grep -v "^llama\|^load" | tail -3; }
lane_a() {
  run $L --models gemma3-270m --n-tokens 1024 --seeds 10,11,12,13
  run $L --models gemma3-270m --n-tokens 2048 --seeds 0,1,4,5,6,7
  run $L --models smollm2-135m --n-tokens 1024 --seeds $S
}
lane_b() {
  run $L/b --models gemma3-270m --n-tokens 2048 --seeds 8,9,10,11,12,13
  run $L/b --models gemma3-270m --n-tokens 4096 --seeds 0
  run $L/b --models smollm2-135m --n-tokens 2048 --seeds $S
  run $L/b --models smollm2-135m --n-tokens 4096 --seeds 0
}
lane_a > /tmp/run20a.log 2>&1 &
lane_b > /tmp/run20b.log 2>&1 &
wait
echo "=== done $(date -u +%H:%M:%S)"
