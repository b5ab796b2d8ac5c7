"""Fourth tuning sweep (tuning seeds): on-policy refits with self-study queries alone and with
the source-balanced repeat+self-study mix.  python docs/results/issue6/tune/sweep4.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-selfstudy", "am-op3-bmix"],
)
grid.run_grid(spec, Path(out), progress=False)
