"""Tenth tuning sweep (tuning seeds): on-policy refits whose per-head guards also choose on the
context's last tokens read again (``guard_tail=256``: up to the tokens after the fitted span).
    python docs/results/issue6/tune/sweep10.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-gtail"],
)
grid.run_grid(spec, Path(out), progress=False)
