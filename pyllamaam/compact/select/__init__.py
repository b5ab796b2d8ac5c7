"""Selection methods; importing this package registers every one of them.

The baselines that only the evaluation reports (``attn-mean``, ``hybrid``, ``random``) live in
:mod:`pyllamaam.evaluation.baselines` and register themselves when it is imported.
"""

from . import attn_rms, keep, snapkv, window  # noqa: F401
from .base import (
    SELECTORS,
    SelectionInput,
    Selector,
    available_methods,
    make_selector,
    rank_by_score,
    register,
    selector_params,
)

__all__ = [
    "SELECTORS",
    "SelectionInput",
    "Selector",
    "available_methods",
    "make_selector",
    "rank_by_score",
    "register",
    "selector_params",
]
