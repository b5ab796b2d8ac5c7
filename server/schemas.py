"""Request bodies (pydantic). Unknown fields are ignored, as OpenAI clients send many.

Responses are plain dicts in the OpenAI shapes; ``usage`` may carry a ``compaction`` entry.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pyllamaam.catalog import QA_TEMPLATE

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    session_id: SessionId | None = Field(None, description="keep the KV state across requests (or X-Session-Id)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty strings")
        return stops


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        ..., description="one prompt: a string or a list of token ids"
    )
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: object) -> str | list[int]:
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if isinstance(v, list) and not v:
            raise ValueError("the prompt is empty")
        return v  # type: ignore[return-value]


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompactRequest(_Body):
    """The parameters of ``Session.compact``; none of ratio, target_cells and memory: the server's
    auto-compaction target."""

    ratio: float | None = Field(None, gt=1.0, description="the compacted span shrinks by this factor")
    target_cells: int | None = Field(None, ge=1, description="cells after compaction (instead of ratio)")
    memory: float | None = Field(
        None, ge=1.0, allow_inf_nan=False,
        description="instead of ratio: KV bytes this many times fewer than the f16 full cache (cache types, "
                    "cells and method from the measured table; the session moves to those types)",
    )
    method: str | None = Field(None, max_length=64, description="'am' or a selection method")
    queries: str | None = Field(None, max_length=128, description="reference queries, e.g. 'repeat'")
    keep_first: int | None = Field(None, ge=0)
    keep_last: int | None = Field(None, ge=1)
    question: str | None = Field(
        None, min_length=1, max_length=4000,
        description="compact for this question: the sentences it reads are kept whole (question-aware)",
    )

    pin: str | None = Field(
        None, min_length=1, max_length=1000,
        description="a regular expression: the sentences it matches are kept verbatim before any other",
    )

    def kwargs(self, template: str = QA_TEMPLATE) -> dict[str, object]:
        """``Session.compact``'s arguments; a question is put in the model's ``template``."""
        out = {k: v for k, v in self.model_dump().items() if v is not None}
        if "question" in out:
            out["task"] = template.format(question=out.pop("question"))
        return out


class NameRequest(_Body):
    name: str = Field(..., min_length=1, max_length=255, description="a file name inside the state folder")
