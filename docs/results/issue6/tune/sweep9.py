"""Ninth tuning sweep (tuning seeds): on-policy refits whose fit adds forward-reading queries to the
repeat pass: the context's last 256 tokens read again, pooled (am-op3-rtail) or balanced
(am-op3-rtail-b), and the prefill's queries (am-op3-rctx).
    python docs/results/issue6/tune/sweep9.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-rtail", "am-op3-rtail-b", "am-op3-rctx"],
)
grid.run_grid(spec, Path(out), progress=False)
