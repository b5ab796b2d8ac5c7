"""API keys: who may call the server, and which namespace a caller's sessions live in.

With keys configured, every request but ``/health`` needs one of them, as
``Authorization: Bearer <key>`` (what OpenAI clients send) or ``X-API-Key: <key>``. Each key is
its own owner: the sessions and saved states made with one key do not exist for another (404,
not 403, so names are not disclosed). The owner is a hash of the key, so the key itself is kept
nowhere but in the settings; without keys every request has the owner ``""``, which leaves
session and file names as they were before keys existed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from pyllamaam.errors import ConfigError

from .errors import Unauthorized, error_body

OPEN_PATHS = frozenset({"/health"})  # llama-server also answers /health without a key


def owner_of_key(key: str) -> str:
    """The namespace of ``key``: 16 hex digits, safe as a folder name."""
    return hashlib.sha256(b"pyllamaam-owner\0" + key.encode()).hexdigest()[:16]


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read the API key file {path}: {err.strerror}") from err
    keys = [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    if not keys:
        raise ConfigError(f"the API key file {path} holds no key")
    return keys


class Keys:
    """The accepted keys; :meth:`owner` checks one in constant time."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [(k.encode(), owner_of_key(k)) for k in dict.fromkeys(keys)]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def owner(self, given: str | None) -> str:
        """The owner of ``given``; :class:`Unauthorized` when keys are required and it is not one."""
        if not self._keys:
            return ""
        if not given:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        g = given.encode()
        found = None
        for k, owner in self._keys:  # every key compared: the time does not tell which one matched
            if hmac.compare_digest(g, k):
                found = owner
        if found is None:
            raise Unauthorized("invalid API key")
        return found


def given_key(headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


class RequireKey:
    """Pure ASGI middleware: 401 without a valid key, else the caller's owner in ``request.state``."""

    def __init__(self, app: Any, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            owner = self.keys.owner(given_key(Headers(scope=scope)))
        except Unauthorized as err:
            if scope["path"] not in OPEN_PATHS:
                body = error_body(str(err), err.kind, err.status)
                await JSONResponse(body, err.status, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
            owner = ""
        scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)
