"""Kernel benchmark: ``python benchmarks/bench_kernel.py [--quick]`` prints JSON.

Seconds per stage (scores, select, beta, values) of the Attention Matching kernel on
synthetic structured data; see ``pyllamaam/cli_bench_kernel.py`` for the sections.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyllamaam.cli_bench_kernel import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
