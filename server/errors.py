"""The server's errors and the one place that turns any exception into an HTTP answer.

::

    PyllamaamError                 (pyllamaam.errors: the library's tree, mapped by ERROR_STATUS)
     └── ApiError                  raised by the server itself; carries its HTTP status and type
          ├── NotFound             404: an unknown session or saved session (of this caller)
          ├── Unauthorized         401: no API key, or not one of the server's
          └── ClientGone           499: the client closed the connection before an answer

Bodies follow OpenAI's shape, ``{"error": {"message", "type", "code"}}``. A message never
carries a filesystem path of the server: the library's messages embed the files it was given,
so :class:`Redactor` takes the server's folders out of every message as a last line of defence
(the endpoints already name a saved session by the name the client gave it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pyllamaam.errors import (
    CompactionError,
    ConfigError,
    ModelError,
    NativeError,
    PyllamaamError,
    StateError,
    UnsupportedLayout,
)


class ApiError(PyllamaamError):
    """An error with its HTTP status, raised by the server itself (not by the library)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self.status = status
        self.kind = kind
        super().__init__(message)


class NotFound(ApiError):
    """404, also for what exists under another API key: its existence is not disclosed."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message, "not_found_error")


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, "authentication_error")


class ClientGone(ApiError):
    """The client disconnected; 499 is nginx's "client closed request", seen only in logs."""

    def __init__(self) -> None:
        super().__init__(499, "the client went away", "cancelled")


# library errors -> (HTTP status, OpenAI error type); the most specific class first
ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (UnsupportedLayout, 400, "unsupported_layout"),
    (ConfigError, 400, "invalid_request_error"),
    (ModelError, 400, "model_error"),
    (StateError, 409, "state_error"),
    (CompactionError, 409, "compaction_error"),
    (NativeError, 503, "native_error"),
    (PyllamaamError, 400, "invalid_request_error"),
]
INTERNAL = "internal server error (details are in the server log)"


def error_body(message: str, kind: str, code: int | str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


def status_of(err: BaseException) -> tuple[int, str]:
    """(HTTP status, error type) of ``err``, by its class alone."""
    if isinstance(err, ApiError):
        return err.status, err.kind
    for cls, status, kind in ERROR_STATUS:
        if isinstance(err, cls):
            return status, kind
    return 500, "server_error"


class Redactor:
    """Replaces the server's folders (state, swap, model, temp, home, cwd) in messages."""

    def __init__(self, *paths: str | os.PathLike | None) -> None:
        self._roots: list[str] = []
        self.add(tempfile.gettempdir(), Path.home(), Path.cwd(), *paths)

    def add(self, *paths: str | os.PathLike | None) -> None:
        for p in paths:
            if p is None or str(p) in ("", ".", "/"):
                continue
            for s in {str(p), str(Path(p).resolve())}:
                if s not in self._roots and len(s) > 1:
                    self._roots.append(s)
        self._roots.sort(key=len, reverse=True)  # /a/b before /a: no half-replaced paths

    def __call__(self, text: str) -> str:
        for root in self._roots:
            text = text.replace(root, "<server>")
        return text


def http_error(err: BaseException, redact: Redactor) -> tuple[int, dict[str, Any]]:
    """(status, body) for ``err``; an unexpected exception is a 500 whose text stays in the log."""
    status, kind = status_of(err)
    message = redact(str(err)) if isinstance(err, PyllamaamError) else INTERNAL
    return status, error_body(message, kind, status)
