"""Sixth tuning sweep (tuning seeds): on-policy refits in 2 layer groups (one re-capture pass
instead of two), against the default 3.
    python docs/results/issue6/tune/sweep6.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op2"],
)
grid.run_grid(spec, Path(out), progress=False)
