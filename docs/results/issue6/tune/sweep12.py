"""Twelfth tuning sweep (tuning seeds): on-policy refits with a smaller exact recent window
(``recent=0.3`` and ``0.4`` of the compacted budget; the default is 0.5).
    python docs/results/issue6/tune/sweep12.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-rec0.3", "am-op3-rec0.4"],
)
grid.run_grid(spec, Path(out), progress=False)
