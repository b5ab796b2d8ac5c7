"""Fourteenth tuning sweep (tuning seeds, stop 16): on-policy refits with a larger exact recent share
(``recent=0.8`` and ``0.9``; the default is 0.5): copies in the continuation read exact recent tokens.
    python docs/results/issue6/tune/sweep14.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-rec0.8", "am-op3-rec0.9"],
)
grid.run_grid(spec, Path(out), progress=False)
