"""What the QA suite's two views (by cells: :mod:`.qa_run`, by bytes: :mod:`.qa_memory`) share:
names of rows and the plot helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

F16 = "f16"
#: The eviction baselines the headline compares the default with.
EVICTIONS = ("kvzip", "chunkkv", "snapkv", "window")


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None without matplotlib (the plots are skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def panel(ax: Any, ticks: list[float], xlabel: str, title: str, ncol: int = 1) -> None:
    """A QA-accuracy panel over a log x axis labelled ``ticks`` as "<t>x"."""
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("QA accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=ncol)


def save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
