"""Seventeenth tuning sweep (tuning seeds, stop 18): the default whose recurring share first holds
the text the model's own greedy continuation (64 tokens) copies from the context (option
``copies``), with ``copy_extend`` = 0, 16 or 32 tokens after each copied run. The option and
its grid methods existed at commit f33fcf9 only: stopped after the 1K contexts and removed
(docs/results/issue6/README.md, "Stop 18").
    python docs/results/issue6/tune/sweep17.py MODEL N_TOKENS SEEDS RATIOS OUT"""
import sys
from pathlib import Path

from pyllamaam.evaluation import grid

model, ns, seeds, ratios, out = sys.argv[1:6]
spec = grid.GridSpec(
    models=[model],
    n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")],
    ratios=[float(x) for x in ratios.split(",")],
    methods=["full", "am-op3-recur1-copy0", "am-op3-recur1-copy16", "am-op3-recur1-copy32"],
)
grid.run_grid(spec, Path(out), progress=False)
