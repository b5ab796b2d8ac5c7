"""Server settings: one typed object, filled from ``PYLLAMAAM_*`` environment variables and flags.

Precedence: command-line flag > environment variable > default. Every field is a flag named
after it (``n_ctx`` -> ``--n-ctx``) and an environment variable (``PYLLAMAAM_N_CTX``).
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    n_gpu_layers: int = Field(0, description="model layers offloaded to the GPU (-ngl; 99: all)")
    flash_attn: bool = Field(False, description="flash attention")
    kv_type: KVType = Field("f16", description="KV cache type of K and V")
    cache_type_k: KVType | None = Field(None, description="K cache type (default: kv_type)")
    cache_type_v: KVType | None = Field(None, description="V cache type (default: kv_type); quantized: --flash-attn")

    # --- HTTP ---
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8080, ge=0, le=65535, description="port to bind")
    log_level: str = Field("info", description="uvicorn and pyllamaam log level")
    # NoDecode: the variable is "k1,k2", not JSON; repr=False keeps keys out of logs
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="API key clients must send as 'Authorization: Bearer KEY' (repeat the flag, or "
        "comma-separate, for several); each key sees only its own sessions and saved states",
    )
    api_key_file: Path | None = Field(None, description="file of API keys, one per line (added to --api-key)")

    # --- requests and sessions ---
    max_tokens: int = Field(256, ge=1, description="default max_tokens of a request")
    max_tokens_cap: int | None = Field(
        None, ge=1,
        description="upper bound on any max_tokens (default: n_ctx); a request asking more is clamped "
        "to it and ends with finish_reason 'length'",
    )
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
    compact_memory: float | None = Field(
        None, ge=1.0, description="instead of compact_ratio: auto-compaction leaves the cells it finds this many "
        "times smaller in bytes than an f16 cache of them (cache types and method from the measured table)"
    )
    compact_method: str | None = Field(None, description="compaction method (default: the library's)")
    compact_queries: str | None = Field(None, description="reference queries (default: the library's)")

    @field_validator("api_key", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        items = [v] if isinstance(v, str) else v
        if isinstance(items, list):
            return [k.strip() for item in items for k in str(item).split(",") if k.strip()]
        return v

    @model_validator(mode="after")
    def _check_kv_types(self) -> Settings:
        from pyllamaam.kvtypes import resolve

        resolve(None, *self.session_kv_types().values(), self.flash_attn)  # a ConfigError is a ValueError
        return self

    def token_cap(self) -> int:
        """The most tokens one request may generate: max_tokens_cap, else n_ctx. The server
        compacts instead of filling the context, so without a cap a generation has no end."""
        return self.max_tokens_cap or self.n_ctx

    def session_kv_types(self) -> dict[str, str]:
        """Model.session's kv_type_k / kv_type_v: cache_type_k/v, else kv_type."""
        return {"kv_type_k": self.cache_type_k or self.kv_type, "kv_type_v": self.cache_type_v or self.kv_type}


# llama-server's short spellings
SHORT_FLAGS = {"n_gpu_layers": ["-ngl"], "flash_attn": ["-fa"]}


def _flags(name: str) -> list[str]:
    return ["--" + name.replace("_", "-"), *SHORT_FLAGS.get(name, [])]


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from ``argv`` on top of the environment; unknown flags exit with usage."""
    parser = argparse.ArgumentParser(prog="pyllamaam serve", description="OpenAI-compatible server")
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if kind is bool:
            parser.add_argument(
                *_flags(name), action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        elif typing.get_origin(kind) is list:  # repeatable
            parser.add_argument(*_flags(name), action="append", default=None, help=field.description, metavar="VALUE")
        else:
            parser.add_argument(*_flags(name), default=None, help=field.description, metavar=name.upper())
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)
