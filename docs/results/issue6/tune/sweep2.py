"""Second tuning sweep (seeds the acceptance grid does not use): on-policy refits, shipped
budgets and the repeat+self-study mix against plain am and the eviction baselines.

    python docs/results/issue6/tune/sweep2.py MODEL N_TOKENS SEEDS RATIOS OUT

Plain am and the mix keep the names sweep.py gave them (am-r0.5, am-mix-r0.5), so the cells of
both sweeps share one cells.jsonl."""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

grid.METHODS["am-r0.5"] = grid.METHODS["am"]
grid.METHODS["am-mix-r0.5"] = grid.METHODS["am-mix"]
model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-r0.5", "am-mix-r0.5", "am-budgets", "am-op3", "snapkv", "h2o", "window"],
)
grid.run_grid(spec, Path(out), progress=False)
