"""Fifteenth tuning sweep (tuning seeds, stop 17): on-policy refits whose exact share holds the
context's repeated text (option ``recurring``: the latest copy of every run of 4 tokens that occurs
twice) in place of part of the recent window: the continuation copies text the context repeats.
    python docs/results/issue6/tune/sweep15.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-recur0.25", "am-op3-recur0.5", "am-op3-recur1"],
)
grid.run_grid(spec, Path(out), progress=False)
