"""The FastAPI app: OpenAI-compatible completions over pyllamaam sessions.

``create_app(settings)`` builds the app; the model is loaded in its lifespan. Tests pass
``load_model`` to use a fake model. With API keys (``--api-key``) every endpoint but
``/health`` needs one, and each key has its own sessions and saved states (server.auth).
Errors become HTTP answers in one place, :func:`server.errors.http_error`.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import pyllamaam
from pyllamaam import catalog
from pyllamaam.errors import PyllamaamError

from .auth import Keys, RequireKey, read_key_file
from .engine import ApiError, Params, Result, SessionManager, Worker, resolve_name
from .errors import ERROR_STATUS, ClientGone, Redactor, error_body, http_error, status_of
from .metrics import Metrics
from .schemas import SESSION_ID_PATTERN, ChatRequest, CompactRequest, CompletionRequest, NameRequest
from .settings import Settings
from .template import ChatTemplate

log = logging.getLogger("pyllamaam.server")
__all__ = ["ERROR_STATUS", "create_app", "error_body", "status_of"]


class ServerState:
    """What the lifespan creates: the model, its sessions, the template, the metrics."""

    def __init__(self, settings: Settings, model: Any, worker: Worker, metrics: Metrics) -> None:
        self.settings = settings
        self.model = model
        self.worker = worker
        self.metrics = metrics
        self.sessions = SessionManager(model, settings, metrics, worker)
        info = model.info
        piece = model.detokenize
        self.template = ChatTemplate(
            info.get("chat_template"),
            bos_token=piece([info["bos"]]) if info.get("bos", -1) >= 0 else "",
            eos_token=piece([info["eos"]]) if info.get("eos", -1) >= 0 else "",
        )
        path = getattr(model, "path", None)
        self.model_id = settings.model_alias or (Path(path).stem if path else settings.model) or "model"
        self.created = int(time.time())
        self.layout: dict[str, Any] = {}


def _default_loader(settings: Settings) -> Any:
    return pyllamaam.load_model(settings.model, n_gpu_layers=settings.n_gpu_layers)


def api_keys(settings: Settings) -> list[str]:
    """--api-key and the lines of --api-key-file; a ConfigError when the file cannot be read."""
    return [*settings.api_key, *(read_key_file(settings.api_key_file) if settings.api_key_file else [])]


def _probe_layout(model: Any, settings: Settings) -> dict[str, Any]:
    s = model.session(n_ctx=min(settings.n_ctx, 256), flash_attn=settings.flash_attn, **settings.session_kv_types())
    try:
        return {
            "memory_layout": s.memory_layout,
            "can_compact": bool(s.can_compact),
            "gate_reason": s.gate_reason,
            "compaction_available": hasattr(s, "compact"),
        }
    finally:
        s.close()


def create_app(settings: Settings | None = None, load_model: Callable[[Settings], Any] | None = None) -> FastAPI:
    """The app; ``load_model(settings)`` returns the model (default: :func:`pyllamaam.load_model`)."""
    settings = settings or Settings()
    loader = load_model or _default_loader
    keys = Keys(api_keys(settings))
    redact = Redactor(settings.state_dir, settings.swap_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker()
        model = await worker.run(loader, settings)
        state = ServerState(settings, model, worker, Metrics())
        redact.add(getattr(model, "path", None), getattr(model, "path", None) and Path(model.path).parent)
        redact.add(state.sessions.swap_dir)
        state.layout = await worker.run(_probe_layout, model, settings)
        app.state.server = state
        log.info("serving %s (%s)", state.model_id, state.layout)
        try:
            yield
        finally:
            await state.sessions.close()
            await worker.run(model.close)
            worker.close()

    app = FastAPI(title="pyllamaam", version=pyllamaam.__version__, lifespan=lifespan)
    app.state.redact = redact
    _add_error_handlers(app)
    _add_routes(app)
    app.add_middleware(RequireKey, keys=keys)
    app.add_middleware(CountRequests)  # outermost: it counts the 401s too
    return app


class CountRequests:
    """Pure ASGI middleware (streaming and disconnects pass through untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [0]

        async def send_(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except Exception:
            status[0] = status[0] or 500  # answered by the outer error handler
            raise
        finally:
            server = getattr(scope["app"].state, "server", None) if "app" in scope else None
            if server is not None:
                path = getattr(scope.get("route"), "path", "other")
                server.metrics.inc("pyllamaam_requests_total", endpoint=path, status=str(status[0] or 499))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str, bytes: lambda b: b.decode("latin-1")})
        body = error_body("; ".join(_short(e) for e in errors[:5]), "invalid_request_error", 422)
        body["detail"] = errors
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", exc.status_code), status_code=exc.status_code
        )

    @app.exception_handler(PyllamaamError)
    async def on_pyllamaam_error(request: Request, exc: PyllamaamError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged, 500
        return _error_response(request, exc)


def _error_response(request: Request, exc: Exception) -> JSONResponse:
    status, body = http_error(exc, request.app.state.redact)
    if status >= 500:
        log.error("request failed: %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(body, status_code=status)


def _short(e: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    return f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid"))


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _owner(request: Request) -> str:
    """The caller's namespace, set by RequireKey (no default: a route it missed fails closed)."""
    return request.state.owner


def _session_id(body_id: str | None, header_id: str | None) -> str | None:
    if header_id is not None and not re.match(SESSION_ID_PATTERN, header_id):
        raise ApiError(400, "X-Session-Id: use 1 to 128 letters, digits, '.', '_', ':' or '-'")
    if body_id and header_id and body_id != header_id:
        raise ApiError(400, f"session_id {body_id!r} and X-Session-Id {header_id!r} differ")
    return body_id or header_id


def _params(st: ServerState, req: Any, max_tokens: int | None, feed_eog: bool) -> Params:
    # clamped, not refused: the answer ends with finish_reason "length", as at any limit
    n = min(max_tokens or st.settings.max_tokens, st.settings.token_cap())
    return Params(
        max_tokens=n,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=list(req.stop or []),
        seed=req.seed,
        feed_eog=feed_eog,
    )


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _add_routes(app: FastAPI) -> None:  # noqa: C901 - one place lists every endpoint
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        st = _state(request)
        meta = {k: st.model.info.get(k) for k in ("arch", "desc", "n_params", "n_ctx_train", "n_vocab")}
        return {
            "object": "list",
            "data": [
                {"id": st.model_id, "object": "model", "created": st.created, "owned_by": "pyllamaam", "meta": meta}
            ],
        }

    @app.get("/props")
    async def props(request: Request) -> dict[str, Any]:
        st = _state(request)
        s = st.settings
        info = {k: v for k, v in st.model.info.items()}
        return {
            "model": {"id": st.model_id, "path": str(getattr(st.model, "path", "")), **info},
            "layout": st.layout,
            "build": {"pyllamaam": pyllamaam.__version__},
            "n_ctx": s.n_ctx,
            "compaction": {
                "auto": s.compact_threshold > 0 and st.layout.get("can_compact", False)
                and st.layout.get("compaction_available", False),
                "threshold": s.compact_threshold,
                "ratio": s.compact_ratio,
                "memory": s.compact_memory,
                "method": s.compact_method,
                "queries": s.compact_queries,
            },
            "sessions": {
                "live": st.sessions.n_live, "max_live": s.max_sessions, "ids": st.sessions.list_ids(_owner(request))
            },
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        st = _state(request)
        st.sessions.publish_progress(_owner(request))
        return PlainTextResponse(st.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(
        req: CompletionRequest, request: Request, x_session_id: str | None = Header(None)
    ) -> Any:
        st = _state(request)
        sid = _session_id(req.session_id, x_session_id)
        prompt = req.prompt
        if isinstance(prompt, str):
            tokens = await st.worker.run(st.model.tokenize, prompt, st.model.info.get("add_bos", False), True)
        else:
            n_vocab = st.model.info["n_vocab"]
            if any(t < 0 or t >= n_vocab for t in prompt):
                raise ApiError(400, f"token ids must be in [0, {n_vocab})")
            tokens = list(prompt)
        params = _params(st, req, req.max_tokens, feed_eog=False)
        return await _respond(request, st, sid, tokens, params, req, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request, x_session_id: str | None = Header(None)) -> Any:
        st = _state(request)
        sid = _session_id(req.session_id, x_session_id)
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in req.messages]
        text = st.template.render(messages)
        add_bos = st.model.info.get("add_bos", False) and not (
            st.template.bos_token and text.startswith(st.template.bos_token)
        )
        tokens = await st.worker.run(st.model.tokenize, text, add_bos, True)
        params = _params(st, req, req.max_completion_tokens or req.max_tokens, feed_eog=True)
        return await _respond(request, st, sid, tokens, params, req, chat=True)

    @app.get("/v1/sessions")
    async def list_sessions(request: Request) -> dict[str, Any]:
        st = _state(request)
        owner = _owner(request)
        return {"object": "list", "data": [st.sessions.describe(i, owner) for i in st.sessions.list_ids(owner)]}

    @app.get("/v1/sessions/{sid}")
    async def get_session(sid: str, request: Request) -> dict[str, Any]:
        return _state(request).sessions.describe(sid, _owner(request))

    @app.delete("/v1/sessions/{sid}")
    async def delete_session(sid: str, request: Request) -> dict[str, Any]:
        await _state(request).sessions.delete(sid, _owner(request))
        return {"id": sid, "deleted": True}

    @app.post("/v1/sessions/{sid}/compact")
    async def compact_session(sid: str, request: Request, body: CompactRequest | None = None) -> dict[str, Any]:
        st = _state(request)
        path = getattr(st.model, "path", None)
        template = catalog.qa_template(path) if path else catalog.QA_TEMPLATE
        report = await st.sessions.compact(sid, (body or CompactRequest()).kwargs(template), _owner(request))
        return {"id": sid, "report": report}

    @app.post("/v1/sessions/{sid}/save")
    async def save_session(sid: str, body: NameRequest, request: Request) -> dict[str, Any]:
        st = _state(request)
        owner = _owner(request)
        return await st.sessions.save(sid, resolve_name(st.settings.state_dir, body.name, owner), owner)

    @app.post("/v1/sessions/{sid}/restore")
    async def restore_session(sid: str, body: NameRequest, request: Request) -> dict[str, Any]:
        st = _state(request)
        if not _valid_id(sid):
            raise ApiError(400, "session ids use 1 to 128 letters, digits, '.', '_', ':' or '-'")
        owner = _owner(request)
        return await st.sessions.restore(sid, resolve_name(st.settings.state_dir, body.name, owner), owner)


def _valid_id(sid: str) -> bool:
    return re.match(SESSION_ID_PATTERN, sid) is not None


async def _respond(
    request: Request, st: ServerState, sid: str | None, tokens: list[int], params: Params, req: Any, chat: bool
) -> Any:
    """Run the generation and answer as one JSON body or as server-sent events."""
    gen = st.sessions.generate(sid, tokens, params, cancelled=request.is_disconnected, owner=_owner(request))
    await gen.__anext__()  # queueing and prompt errors surface here, before any byte is sent
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    kind = "chat.completion" if chat else "text_completion"
    base = {"id": rid, "created": int(time.time()), "model": st.model_id}
    if sid is not None:
        base["session_id"] = sid

    def choice(text: str | None, finish: str | None, stream: bool) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if stream:
            delta = {"content": text} if text is not None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish
        }

    if not req.stream:
        parts: list[str] = []
        result: Result | None = None
        async for item in gen:
            if isinstance(item, Result):
                result = item
            else:
                parts.append(item)
        if result is None or result.finish_reason == "cancelled":
            raise ClientGone()
        return {
            **base,
            "object": kind,
            "choices": [choice("".join(parts), result.finish_reason, False)],
            "usage": result.usage(),
        }

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    obj = "chat.completion.chunk" if chat else "text_completion"

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                yield _sse({**base, "object": obj, "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ]})
            async for item in gen:
                if isinstance(item, Result):
                    if item.finish_reason == "cancelled":
                        return
                    final = {**base, "object": obj, "choices": [choice(None if chat else "", item.finish_reason, True)]}
                    final["usage"] = item.usage() if not include_usage else None
                    yield _sse(final)
                    if include_usage:
                        yield _sse({**base, "object": obj, "choices": [], "usage": item.usage()})
                elif item:
                    yield _sse({**base, "object": obj, "choices": [choice(item, None, True)]})
            yield _sse("[DONE]")
        except PyllamaamError as err:  # after the headers: report in the stream
            yield _sse(http_error(err, request.app.state.redact)[1])
            yield _sse("[DONE]")
        finally:
            await gen.aclose()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
