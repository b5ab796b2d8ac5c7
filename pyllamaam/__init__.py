"""pyllamaam: Attention Matching KV-cache compaction for llama.cpp, driven from Python.

Importing this package loads nothing native; the patched libllama is loaded by the first
:func:`load_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CompactionError,
    ConfigError,
    ModelError,
    NativeError,
    PyllamaamError,
    StateError,
    UnsupportedLayout,
)

if TYPE_CHECKING:
    from .engine import Model, Session
    from .kv import KVState

__all__ = [
    "CompactionError",
    "ConfigError",
    "KVState",
    "Model",
    "ModelError",
    "NativeError",
    "PyllamaamError",
    "Session",
    "StateError",
    "UnsupportedLayout",
    "load_model",
]

__version__ = "0.1.0"


def load_model(path: Any = None, **opts: Any) -> Model:
    """Load a GGUF model; see :func:`pyllamaam.engine.load_model`."""
    from .engine import load_model as _load

    return _load(path, **opts)


def __getattr__(name: str) -> Any:
    if name in ("Model", "Session"):
        from . import engine

        return getattr(engine, name)
    if name == "KVState":
        from .kv import KVState

        return KVState
    raise AttributeError(f"module 'pyllamaam' has no attribute {name!r}")
