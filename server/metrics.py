"""Counters and gauges rendered in the Prometheus text format (no client library needed)."""

from __future__ import annotations

from collections import defaultdict

# name -> (type, help)
_FAMILIES = {
    "pyllamaam_requests_total": ("counter", "HTTP requests by endpoint and status"),
    "pyllamaam_prompt_tokens_total": ("counter", "prompt tokens of completed requests"),
    "pyllamaam_prompt_tokens_reused_total": ("counter", "prompt tokens served from a session's cache"),
    "pyllamaam_completion_tokens_total": ("counter", "generated tokens"),
    "pyllamaam_compactions_total": ("counter", "compactions by trigger (auto, manual)"),
    "pyllamaam_compaction_fallbacks_total": ("counter", "compactions that fell back"),
    "pyllamaam_compaction_cells_before_total": ("counter", "cells before compaction, summed"),
    "pyllamaam_compaction_cells_after_total": ("counter", "cells after compaction, summed"),
    "pyllamaam_compaction_seconds_total": ("counter", "seconds spent compacting"),
    "pyllamaam_sessions_evicted_total": ("counter", "sessions saved to disk to make room"),
    "pyllamaam_sessions_reloaded_total": ("counter", "evicted sessions loaded back"),
    "pyllamaam_requests_rejected_total": ("counter", "requests refused because a queue was full"),
    "pyllamaam_requests_cancelled_total": ("counter", "generations stopped by a client disconnect"),
    "pyllamaam_sessions_live": ("gauge", "sessions holding a native context"),
    "pyllamaam_requests_in_flight": ("gauge", "requests being served or waiting"),
    "pyllamaam_compactions_running": ("gauge", "compactions running now"),
    "pyllamaam_compaction_progress": ("gauge", "share done of the current stage of each running compaction"),
    "pyllamaam_compaction_running_seconds": ("gauge", "seconds each running compaction has taken so far"),
}
# families with one series per running thing: nothing to show when nothing runs
_PER_ITEM = {"pyllamaam_compaction_progress", "pyllamaam_compaction_running_seconds"}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


class Metrics:
    """Mutated from the event loop only, so no lock."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, float]] = defaultdict(dict)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        series = self._values[name]
        series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][_labels(labels)] = float(value)

    def replace(self, name: str, series: list[tuple[dict[str, str], float]]) -> None:
        """Make ``series`` (labels, value) the whole of family ``name``."""
        self._values[name] = {_labels(labels): float(value) for labels, value in series}

    def get(self, name: str, **labels: str) -> float:
        return self._values.get(name, {}).get(_labels(labels), 0.0)

    def observe_compaction(self, report: object, trigger: str, seconds: float) -> None:
        self.inc("pyllamaam_compactions_total", trigger=trigger)
        self.inc("pyllamaam_compaction_cells_before_total", float(getattr(report, "cells_before", 0)))
        self.inc("pyllamaam_compaction_cells_after_total", float(getattr(report, "cells_after", 0)))
        self.inc("pyllamaam_compaction_seconds_total", seconds)
        if getattr(report, "fell_back", False):
            self.inc("pyllamaam_compaction_fallbacks_total")

    def render(self) -> str:
        lines = []
        for name, (kind, help_) in _FAMILIES.items():
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            series = self._values.get(name) or ({} if name in _PER_ITEM else {"": 0.0})
            for key, value in sorted(series.items()):
                lines.append(f"{name}{key} {value:g}")
        return "\n".join(lines) + "\n"
