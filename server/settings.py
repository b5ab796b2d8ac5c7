"""Server settings: one typed object, filled from ``PYLLAMAAM_*`` environment variables and flags.

Precedence: command-line flag > environment variable > default. Every field is a flag named
after it (``n_ctx`` -> ``--n-ctx``) and an environment variable (``PYLLAMAAM_N_CTX``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# the KV cache types llama.cpp accepts (pyllamaam.kvtypes.BY_NAME)
KVType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]


class Settings(BaseSettings):
    """Everything the server can be told. See ``python -m server --help``."""

    model_config = SettingsConfigDict(env_prefix="PYLLAMAAM_", extra="ignore", protected_namespaces=())

    # --- model and contexts ---
    model: str | None = Field(None, description="catalog name or .gguf path (default: SmolLM2-135M)")
    model_alias: str | None = Field(None, description="model id shown by /v1/models")
    n_ctx: int = Field(4096, ge=16, description="context size of each session")
    n_threads: int | None = Field(None, ge=1, description="CPU threads per decode")
    n_batch: int = Field(512, ge=1, description="prompt batch size")
    flash_attn: bool = Field(False, description="flash attention")
    kv_type: KVType = Field("f16", description="KV cache type of K and V")
    cache_type_k: KVType | None = Field(None, description="K cache type (default: kv_type)")
    cache_type_v: KVType | None = Field(None, description="V cache type (default: kv_type); quantized: --flash-attn")

    # --- HTTP ---
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8080, ge=0, le=65535, description="port to bind")
    log_level: str = Field("info", description="uvicorn and pyllamaam log level")

    # --- requests and sessions ---
    max_tokens: int = Field(256, ge=1, description="default max_tokens of a request")
    max_tokens_cap: int | None = Field(None, ge=1, description="upper bound on any max_tokens")
    max_sessions: int = Field(8, ge=1, description="live sessions; the least recently used go to disk")
    queue_size: int = Field(8, ge=1, description="requests waiting per session before 429")
    max_pending: int = Field(64, ge=1, description="requests in flight in all before 503")
    state_dir: Path | None = Field(None, description="folder for /save and /restore names")
    swap_dir: Path | None = Field(None, description="folder for evicted sessions (default: a temp dir)")

    # --- compaction ---
    compact_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="auto-compact when cells would pass this fraction of n_ctx (0: never)"
    )
    compact_ratio: float = Field(4.0, gt=1.0, description="auto-compaction shrinks the span by this factor")
    compact_method: str | None = Field(None, description="compaction method (default: the library's)")
    compact_queries: str | None = Field(None, description="reference queries (default: the library's)")

    @model_validator(mode="after")
    def _check_kv_types(self) -> Settings:
        from pyllamaam.kvtypes import resolve

        resolve(None, *self.session_kv_types().values(), self.flash_attn)  # a ConfigError is a ValueError
        return self

    def session_kv_types(self) -> dict[str, str]:
        """Model.session's kv_type_k / kv_type_v: cache_type_k/v, else kv_type."""
        return {"kv_type_k": self.cache_type_k or self.kv_type, "kv_type_v": self.cache_type_v or self.kv_type}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from ``argv`` on top of the environment; unknown flags exit with usage."""
    parser = argparse.ArgumentParser(prog="pyllamaam serve", description="OpenAI-compatible server")
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if kind is bool:
            parser.add_argument(
                _flag(name), action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            parser.add_argument(_flag(name), default=None, help=field.description, metavar=name.upper())
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)
