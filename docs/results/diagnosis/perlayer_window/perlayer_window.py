"""Diagnosis (stop 20): which of Gemma-3's global layers (5, 11, 17) needs its recent text exact for
the continuation, and what a per-layer exact window costs in recall.

Each variant is the fill mode of head budgets (each head's compacted cells: its fitted keys, then
an exact window of its most recent span keys; every head keeps the same cells, so cells and keys
kept are the uniform default's). The budgets are given per layer as a multiple of the default's
fitted keys (1: the default's split; 0: one fitted key, the rest a pure recent window; 1.5: more
fitted keys, a shorter window), so the total of fitted keys is not held fixed. ``fillu`` is the
fill mode with every layer at 1 (the default's split through the fill code path). A diagnosis
only: it replaces ``pipeline._head_budgets`` in this process.

    python docs/results/diagnosis/perlayer_window/perlayer_window.py MODEL N_TOKENS SEEDS RATIOS METHODS OUT

Ran: gemma3-270m 2048 7 10 full,default,fillu,w5,w11,w17 (acceptance context 2K seed 7, the one
that decides the mean) and gemma3-270m 1024,2048 2,3 10,20 full,fillu,pA,pB,pC,pE,pF,w11 (the
tuning contexts; stopped after 1K seeds 2, 3 and part of 2K seed 2). Cells: cells.jsonl here.
"""
import sys
from pathlib import Path
import numpy as np
from pyllamaam import pipeline
from pyllamaam.evaluation import grid

def patched(budgets, layers, kv, T, t, cap, cells="ratio"):
    if pipeline._uniform(budgets):
        return {il: t for il in layers}
    H = kv.keys[layers[0]].shape[1]
    out = {}
    for il in layers:
        p = float(budgets.get(f"L{il}H0", 0.0))
        out[il] = np.full(H, min(int(round(cap * t)), max(1, int(round(p * t)))), dtype=np.int64)
    return out
pipeline._head_budgets = patched

def mk(d):  # fraction of the default's fitted keys per global layer
    return {"method": "am", "budgets": {f"L{i}H0": d.get(i, 0.0) for i in range(18)}}
grid.METHODS.update({
    "fillu": mk({5: 1, 11: 1, 17: 1}),
    "w5": mk({5: 0, 11: 1, 17: 1}),
    "w11": mk({5: 1, 11: 0, 17: 1}),
    "w17": mk({5: 1, 11: 1, 17: 0}),
    "pA": mk({5: 1, 11: 0.5, 17: 1}),
    "pB": mk({5: 0.5, 11: 0.5, 17: 1.5}),
    "pC": mk({5: 0.5, 11: 1, 17: 1}),
    "pE": mk({5: 0.5, 11: 0.5, 17: 1}),
    "pF": mk({5: 0.25, 11: 0.75, 17: 1.5}),
})
model, ns, seeds, ratios, methods, out = sys.argv[1:7]
spec = grid.GridSpec(models=[model], n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")], ratios=[float(x) for x in ratios.split(",")],
    methods=methods.split(","))
grid.run_grid(spec, Path(out), progress=False)
