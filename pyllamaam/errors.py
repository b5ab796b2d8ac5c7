"""The pyllamaam exception tree.

::

    PyllamaamError
     ├── ConfigError          bad options or arguments given by the caller
     ├── ModelError           missing / invalid / unsupported model file
     ├── NativeError          a libllama call failed (carries .function and .code)
     ├── StateError           a state blob or saved session is corrupt or does not fit
     ├── UnsupportedLayout    the memory layout cannot be compacted (carries .reason)
     └── CompactionError      non-finite or inconsistent numbers during compaction
"""

from __future__ import annotations


class PyllamaamError(Exception):
    """Base class of every error raised by pyllamaam."""


class ConfigError(PyllamaamError, ValueError):
    """An option or argument has a bad value."""


class ModelError(PyllamaamError):
    """A model file is missing, not a GGUF, or of an unsupported architecture."""


class NativeError(PyllamaamError):
    """A call into the patched libllama returned an error code."""

    def __init__(self, function: str, code: int, message: str = "") -> None:
        self.function = function
        self.code = code
        text = f"{function} failed with code {code}"
        super().__init__(f"{text}: {message}" if message else text)


class StateError(PyllamaamError):
    """A KV state blob or a saved session file is corrupt, truncated or does not fit."""


class UnsupportedLayout(PyllamaamError):
    """The memory layout of this model/context cannot be compacted."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CompactionError(PyllamaamError):
    """Compaction met non-finite or inconsistent numbers."""
