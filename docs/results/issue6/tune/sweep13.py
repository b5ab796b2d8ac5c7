"""Thirteenth tuning sweep (tuning seeds): on-policy refits fitted on 4x the query rows
(``max_queries=8192`` rows per KV head; the default 2048 is 512 tokens of Gemma-3's 4 query heads).
    python docs/results/issue6/tune/sweep13.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-q8k"],
)
grid.run_grid(spec, Path(out), progress=False)
