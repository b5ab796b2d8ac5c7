"""Selection methods; importing this package registers every one of them."""

from . import attn_mean, attn_rms, hybrid, keep, random, snapkv, window  # noqa: F401
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
