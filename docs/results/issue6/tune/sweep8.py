"""Eighth tuning sweep (tuning seeds): on-policy refits whose snapkv part observes the context's
last 32 tokens read again (``observe=32``): the hybrid keys (am-op3-tail) and SnapKV's keys with
AM's fit (am-op3-snaptail), against the default.
    python docs/results/issue6/tune/sweep8.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-tail", "am-op3-snaptail"],
)
grid.run_grid(spec, Path(out), progress=False)
