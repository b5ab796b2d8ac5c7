"""Tuning sweep for the per-model default: the recent-window share and the query mix, in the
eval harness (suite + continuation), on seeds the acceptance grid does not use.

Run from the repo root, alone on the machine:
    python docs/results/issue6/tune/sweep.py MODEL N_TOKENS SEEDS RATIOS OUT
e.g. gemma3-270m 1024,2048 2,3 10,20 docs/results/issue6/tune/gemma3-270m
Variants are registered as extra grid methods named am[-mix]-r<share>."""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

VARIANTS = {}
for q, tag in (("repeat", "am"), ("repeat+self-study", "am-mix")):
    for share in (0.5, 0.65, 0.8):
        VARIANTS[f"{tag}-r{share:g}"] = {"method": "am", "queries": q, "recent": share, "on_policy": 1}
grid.METHODS.update(VARIANTS)

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", *VARIANTS, "snapkv", "h2o", "window"],
)
grid.run_grid(spec, Path(out), progress=False)
