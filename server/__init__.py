"""pyllamaam's OpenAI-compatible HTTP server (FastAPI + uvicorn).

Start it with ``pyllamaam serve`` or ``python -m server``; build the app with
:func:`create_app` for tests or other ASGI servers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app", "main"]


def __getattr__(name: str) -> Any:
    # lazy: importing server does not import FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(f"module 'server' has no attribute {name!r}")
