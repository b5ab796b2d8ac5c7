"""Eleventh tuning sweep (tuning seeds): on-policy refits whose exact share of the budget holds, per
head, the keys the context's last 32 tokens attend to most (``exact="observed"``), not the recent window.
    python docs/results/issue6/tune/sweep11.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-exobs"],
)
grid.run_grid(spec, Path(out), progress=False)
