"""Sixteenth tuning sweep (tuning seeds, stop 18): the model's own greedy continuation as a
look ahead at what the next tokens will read. ``exact="lookahead"`` keeps, per head, the keys
64 generated tokens attend to most exact; ``am-op3-recur1-lmix`` adds 64 generated tokens'
queries to the default's fit as half of its rows (mix="balanced").
    python docs/results/issue6/tune/sweep16.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-look", "am-op3-recur1-lmix"],
)
grid.run_grid(spec, Path(out), progress=False)
