"""Fifth tuning sweep (tuning seeds): on-policy refits with the span fitted in 512-cell pieces,
and with a repeat pass over 512 evenly spread tokens.
    python docs/results/issue6/tune/sweep5.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-chunk", "am-op3-r512"],
)
grid.run_grid(spec, Path(out), progress=False)
