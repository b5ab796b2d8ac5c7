"""Where the attention passes of a compaction run: numpy on the CPU, or CuPy on a CUDA GPU.

The heavy array work of a compaction is a few attention passes over ``[heads, queries, cells]``
blocks (:mod:`pyllamaam.compact._attention`: the select scores, the fit's statistics, the guards'
and the verify gate's errors): matrix products and exponentials that a GPU does in a fraction of
the time the CPU takes, while llama.cpp's prefill there is already fast. Everything else (the
NNLS and least-squares solves on the kept keys, the bookkeeping) stays numpy.

Option ``arrays`` of :meth:`Session.compact <pyllamaam.engine.Session.compact>`:

- ``"auto"`` (the default): CuPy where the session's model has layers on a GPU and CuPy is
  installed and sees a CUDA device, else numpy (and numpy for good once a CuPy pass has failed);
- ``"numpy"``: always the CPU;
- ``"cupy"``: CuPy, a :class:`~pyllamaam.errors.ConfigError` where it cannot run.

CuPy is an optional dependency (``pip install 'pyllamaam[cuda12]'`` or ``[cuda13]``, matching the
CUDA toolkit the library was built with). Inputs and results stay numpy: only the passes move.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError

log = logging.getLogger("pyllamaam.arrays")
R = TypeVar("R")

#: The values option ``arrays`` takes.
CHOICES = ("auto", "numpy", "cupy")

_current: contextvars.ContextVar[ModuleType | None] = contextvars.ContextVar("pyllamaam_arrays", default=None)
#: The first error of a CuPy pass in this process (not running out of memory): "auto" stays on numpy after it
_failed: list[str] = []


@cache
def cupy_status() -> tuple[ModuleType | None, str]:
    """CuPy and its CUDA devices: ``(cupy, description)``, or ``(None, why not)``."""
    try:
        import cupy
    except Exception as err:  # not installed, or a wheel for another CUDA
        return None, f"CuPy is not importable ({type(err).__name__}: {err}); install pyllamaam[cuda12] or [cuda13]"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # no driver, no device
        return None, f"CuPy {cupy.__version__} sees no CUDA device ({type(err).__name__}: {err})"
    if n < 1:
        return None, f"CuPy {cupy.__version__} sees no CUDA device"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return cupy, f"CuPy {cupy.__version__} on {name}"


def resolve(choice: str, offloaded: bool) -> str:
    """``"numpy"`` or ``"cupy"`` for option ``arrays`` = ``choice`` on a session whose model has
    layers on a GPU (``offloaded``)."""
    if choice not in CHOICES:
        raise ConfigError(f"arrays must be one of {', '.join(map(repr, CHOICES))}, not {choice!r}")
    if choice == "numpy" or (choice == "auto" and not offloaded):  # CPU sessions never import CuPy
        return "numpy"
    cupy, why = cupy_status()
    if choice == "cupy":
        if cupy is None:
            raise ConfigError(f"arrays='cupy': {why}")
        return "cupy"
    return "cupy" if cupy is not None and not _failed else "numpy"


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the attention passes inside the block on ``name`` ("numpy" or "cupy"); the GPU memory
    they took goes back to the device after it."""
    if name == "numpy":
        token = _current.set(None)
        try:
            yield
        finally:
            _current.reset(token)
        return
    cupy, why = cupy_status()
    if cupy is None:
        raise ConfigError(f"arrays='cupy': {why}")
    token = _current.set(cupy)
    try:
        yield
    finally:
        _current.reset(token)
        with contextlib.suppress(Exception):  # never in place of the block's own error
            cupy.cuda.Device().synchronize()
            cupy.get_default_memory_pool().free_all_blocks()


def run(fn: Callable[..., R], *args: Any) -> R:
    """``fn(xp, *args)`` on the array module of this context. A pass that fails on the GPU runs
    again on numpy, with a warning: one that ran out of memory (llama.cpp holds the model and the
    cache there) just that once; after any other error ``arrays="auto"`` stays on numpy in this
    process (:func:`resolve`)."""
    xp = current()
    if xp is np:
        return fn(np, *args)
    try:
        return fn(xp, *args)
    except Exception as err:
        with contextlib.suppress(Exception):
            xp.get_default_memory_pool().free_all_blocks()
        if type(err).__name__ == "OutOfMemoryError":
            log.warning("an attention pass ran out of GPU memory (%s): it runs on the CPU", err)
        else:
            if not _failed:
                _failed.append(f"{type(err).__name__}: {err}")
            log.warning("an attention pass failed on the GPU (%s: %s): it runs on the CPU, and arrays='auto' "
                        "stays there in this process", type(err).__name__, err)
        return fn(np, *args)


def current() -> ModuleType:
    """The array module of the passes in this context: numpy, or cupy inside ``use("cupy")``."""
    return _current.get() or np


def name() -> str:
    """``"numpy"`` or ``"cupy"``: where :func:`current` runs."""
    return "numpy" if _current.get() is None else "cupy"


def module_of(a: Any) -> ModuleType:
    """numpy, or cupy for a CuPy array."""
    if type(a).__module__.partition(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(a: Any) -> Any:
    """``a`` as a numpy array (None stays None)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get()
