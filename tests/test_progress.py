"""Session.compact(progress=...): the stages in order, every layer counted, and a callback that
raises ends the compaction with the cache restored."""

from __future__ import annotations

import numpy as np
import pytest

from pyllamaam.progress import STAGES

pytestmark = pytest.mark.native

LENIENT = {"max_kl": float("inf"), "max_attention_error": float("inf")}


def _ids(n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(10, 500, n)]


@pytest.mark.parametrize("on_policy", [1, 2])
def test_progress_reports_every_stage_and_layer(tiny_models, on_policy):
    calls: list[tuple[str, int, int]] = []
    with tiny_models["llama"].session(n_ctx=512) as s:
        s.prefill(_ids(200, 3))
        rep = s.compact(ratio=4, queries="repeat", on_policy=on_policy, progress=lambda *a: calls.append(a), **LENIENT)
        n_layers = len(s.compact_layers())
    assert not rep.fell_back, rep.reason
    assert [st for st in dict.fromkeys(c[0] for c in calls)] == list(STAGES)
    for stage in STAGES:
        mine = [(d, t) for st, d, t in calls if st == stage]
        total = n_layers if stage == "fit" else 1
        assert mine[0] == (0, total) and mine[-1] == (total, total), (stage, mine)
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)
    assert len([c for c in calls if c[0] == "fit"]) == n_layers + 1


def test_a_progress_callback_that_raises_restores_the_cache(tiny_models):
    def stop(stage: str, done: int, total: int) -> None:
        if stage == "write":
            raise RuntimeError("cancelled by the caller")

    with tiny_models["llama"].session(n_ctx=512) as s:
        s.prefill(_ids(200, 4))
        blob, cells = s.snapshot(), s.n_cells
        rep = s.compact(ratio=4, queries="repeat", progress=stop, **LENIENT)
        assert rep.fell_back and "cancelled by the caller" in rep.reason
        assert s.snapshot() == blob and s.n_cells == cells
