"""Key selection: the base class, the registry and shared ranking helpers.

A selector ranks the keys of every head of one layer, best first. The kernel keeps the
first ``t`` of each ranking and refills zero-weight slots from the rest, so a ranking must
cover every valid key. Adding a method is one small module with one registered class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...errors import ConfigError
from .._attention import AttentionStats


@dataclass(frozen=True)
class SelectionInput:
    """Everything a selector may read, for H heads of one layer.

    Attributes
    ----------
    K : ndarray, float32, [H, T, d]
    Q : ndarray, float32, [H, n, d]
    scale : float
    prior_bias : ndarray or None, float32, [H, T]
    valid : ndarray, bool, [H, T]
        False for cells with ``prior_bias == -inf`` (padding): never selectable.
    stats : AttentionStats
    t : ndarray, int, [H]
        Keys to keep per head.
    seed : int
    obs : ndarray or None, float32, [H, m, d]
        Observation queries for selectors that score keys by what the next tokens read
        (``snapkv``); None: they observe the last rows of Q.
    """

    K: np.ndarray
    Q: np.ndarray
    scale: float
    prior_bias: np.ndarray | None
    valid: np.ndarray
    stats: AttentionStats
    t: np.ndarray
    seed: int
    obs: np.ndarray | None = None


@dataclass(frozen=True)
class Selector:
    """Base class of every selection method; subclasses override :meth:`rank`.

    Class attributes
    ----------------
    name : str
        Registry name (``method=`` of :func:`~pyllamaam.compact.compact_head`).
    fits : bool
        Whether beta and values are fitted by default (Attention Matching) or the kept
        cells keep their original values and bias (eviction baselines).
    scores : tuple of str
        Key scores of :class:`AttentionStats` that :meth:`rank` reads (a subset of
        ``("rms", "mean", "max")``); the others are not computed.
    """

    name: ClassVar[str] = ""
    fits: ClassVar[bool] = True
    scores: ClassVar[tuple[str, ...]] = ()

    def rank(self, inp: SelectionInput) -> np.ndarray:
        """Rank keys best first.

        Returns
        -------
        ndarray, int64, [H, T]
            A permutation of ``range(T)`` per head with every valid key before any
            invalid one.
        """
        raise NotImplementedError


def rank_by_score(score: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rank keys by descending score, invalid keys last, ties by position (stable).

    Parameters
    ----------
    score : ndarray, [H, T]
    valid : ndarray, bool, [H, T]

    Returns
    -------
    ndarray, int64, [H, T]
    """
    key = np.where(valid, -np.asarray(score, dtype=np.float64), np.inf)
    return np.argsort(key, axis=1, kind="stable")


def check_positive_int(owner: str, name: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{owner}: {name} must be an integer >= 1, got {value!r}")


SELECTORS: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator adding a selector to the registry under ``cls.name``."""
    if not cls.name or cls.name in SELECTORS:
        raise ValueError(f"bad or duplicate selector name {cls.name!r}")
    SELECTORS[cls.name] = cls
    return cls


def available_methods() -> tuple[str, ...]:
    """Names of the registered selection methods."""
    return tuple(sorted(SELECTORS))


def selector_params(method: str) -> frozenset[str]:
    """Option names that belong to the selector ``method``."""
    return frozenset(f.name for f in dataclasses.fields(_lookup(method)))


def make_selector(method: str, **params: object) -> Selector:
    """Build the selector ``method`` with its options.

    Raises
    ------
    ConfigError
        Unknown method or option, or a bad option value.
    """
    cls = _lookup(method)
    unknown = set(params) - selector_params(method)
    if unknown:
        raise ConfigError(f"method {method!r} takes no option(s) {sorted(unknown)}")
    return cls(**params)


def _lookup(method: str) -> type[Selector]:
    try:
        return SELECTORS[method]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown selection method {method!r}; known: {', '.join(available_methods())}"
        ) from None
