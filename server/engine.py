"""Sessions behind the HTTP API: one model, many KV sessions, one native worker thread.

A llama.cpp context must not be used by two threads at once, while contexts of one model may
run side by side. Native calls run on a single worker thread, in submission order, and
requests on one session are serialized by its lock, with a bounded number waiting; other
sessions interleave token by token on the worker. A compaction (asked for, or automatic before
a prefill that passes the threshold) runs instead on a thread of its own with its session
locked, so the worker keeps serving the other sessions meanwhile; the session shows its
progress in ``describe()`` and in the metrics. At most
``max_sessions`` named sessions hold a native context; the least recently used idle one is
saved to ``swap_dir`` and loaded back on its next request. Anonymous requests share a few
unnamed sessions that are never saved.

Every session belongs to an owner (a hash of the caller's API key, ``""`` without keys): a
session is found by (owner, id), its swap file and saved states live in the owner's folder, and
an anonymous session's cache is reused only by its last owner. A generation whose client went
away stops at the next token; the tokens made so far stay in the cache, as after any stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pyllamaam.errors import CompactionError, ConfigError, StateError
from pyllamaam.memory import wants_surprisal

from .errors import ApiError, ClientGone, NotFound
from .metrics import Metrics
from .sampling import Sampler, StopScanner, is_eog
from .settings import Settings

log = logging.getLogger("pyllamaam.server")
T = TypeVar("T")
N_ANONYMOUS = 2
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
__all__ = ["ApiError", "Params", "Result", "SessionManager", "Worker", "resolve_name"]


class Worker:
    """Threads that run native calls (the default: one, in submission order)."""

    def __init__(self, threads: int = 1, name: str = "pyllamaam-native") -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # a cancelled await leaves the job running; later jobs queue behind it, so the session
        # is never touched by two calls at once
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def run_to_end(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like run(), but a cancelled caller still waits for the job to end before it goes on:
        with more than one thread, nothing else may touch the job's session until it ends."""
        fut = asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            while not fut.done():
                try:
                    await asyncio.wait({fut})
                except asyncio.CancelledError:
                    continue
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class Slot:
    """A session id and what holds its state: a live Session, a swap file, or nothing yet."""

    id: str  # as the client names it
    session: Any = None
    swap: Path | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # requests holding or waiting for the lock
    anonymous: bool = False
    owner: str = ""  # whose it is (see server.auth); an anonymous slot: who used it last
    compactable: bool = False  # the library has compact() and the layout gate allows it
    auto: bool = False  # auto-compaction is on for this session
    # the running compaction: trigger, stage, done, total, started (time.monotonic()); replaced
    # whole by the compacting thread, read by the event loop
    progress: dict[str, Any] | None = None


@dataclass
class Params:
    """What one generation needs besides the prompt."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    feed_eog: bool = False  # chat: keep the end-of-turn token in the cache, as the template will


@dataclass
class Result:
    """The end of one generation."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    compactions: list[dict[str, Any]]

    def usage(self) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        if self.compactions:
            u["compaction"] = self.compactions
        return u


def report_dict(report: Any) -> dict[str, Any]:
    """A CompactionReport as JSON-able data."""
    if hasattr(report, "to_dict"):
        return report.to_dict()
    import json

    return json.loads(report.to_json())


class SessionManager:
    """Owns the model's sessions; every method is called from the event loop."""

    def __init__(self, model: Any, settings: Settings, metrics: Metrics, worker: Worker) -> None:
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.worker = worker
        # compactions, each with its session locked (a slot's lock is held by at most one request)
        self.compactor = Worker(settings.max_sessions + N_ANONYMOUS, "pyllamaam-compact")
        self._named: OrderedDict[tuple[str, str], Slot] = OrderedDict()  # (owner, id); least recently used first
        self._anonymous: list[Slot] = []
        self._pending = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if settings.swap_dir is not None:
            self.swap_dir = Path(settings.swap_dir)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="pyllamaam-swap-")
            self.swap_dir = Path(self._tmp.name)
        self.swap_dir.mkdir(parents=True, exist_ok=True)

    # --- lifecycle ---
    async def close(self) -> None:
        await asyncio.to_thread(self.compactor.close)  # running compactions end first
        for slot in [*self._named.values(), *self._anonymous]:
            if slot.session is not None:
                await self.worker.run(slot.session.close)
                slot.session = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def describe(self, sid: str, owner: str = "") -> dict[str, Any]:
        slot = self._named.get((owner, sid))
        if slot is None:
            raise NotFound(f"unknown session {sid!r}")
        s = slot.session
        d: dict[str, Any] = {
            "id": sid, "live": s is not None, "busy": slot.lock.locked(), "compactable": slot.compactable
        }
        if s is not None:
            d.update(n_cells=s.n_cells, n_ctx=s.n_ctx, n_tokens=len(s.tokens))
        p = slot.progress
        if p is not None:
            d["compaction"] = _progress_view(p)
        return d

    def running_compactions(self, owner: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(session id, progress) of every compaction running now (of ``owner``'s sessions only)."""
        slots = [*self._named.values(), *self._anonymous]
        return [
            (slot.id, _progress_view(p))
            for slot in slots
            if (p := slot.progress) is not None and owner in (None, slot.owner)
        ]

    def publish_progress(self, owner: str = "") -> None:
        """Set the metrics' gauges of running compactions (before they are rendered): the count
        of all, the per-session series of ``owner``'s sessions alone (their ids are names)."""
        m = self.metrics
        m.set("pyllamaam_compactions_running", len(self.running_compactions()))
        running = self.running_compactions(owner)
        m.replace("pyllamaam_compaction_progress", [
            ({"session": sid, "stage": p["stage"]}, p["done"] / p["total"] if p["total"] else 0.0) for sid, p in running
        ])
        m.replace("pyllamaam_compaction_running_seconds", [({"session": sid}, p["seconds"]) for sid, p in running])

    def list_ids(self, owner: str = "") -> list[str]:
        return [sid for o, sid in self._named if o == owner]

    @property
    def n_live(self) -> int:
        return sum(s.session is not None for s in self._named.values())

    # --- native sessions ---
    def _session_opts(self) -> dict[str, Any]:
        st = self.settings
        return {
            "n_ctx": st.n_ctx,
            "flash_attn": st.flash_attn,
            "n_threads": st.n_threads,
            **st.session_kv_types(),
            "n_batch": st.n_batch,
        }

    def _setup(self, session: Any, slot: Slot) -> Any:
        """Turn on auto-compaction when the library and the memory layout allow it (worker)."""
        st = self.settings
        slot.compactable = hasattr(session, "compact") and bool(session.can_compact)
        slot.auto = False
        if slot.compactable and st.compact_threshold > 0 and hasattr(session, "auto_compact"):
            given = (("method", st.compact_method), ("queries", st.compact_queries))
            opts: dict[str, Any] = {k: v for k, v in given if v}
            opts["progress"] = _reporter(slot, "auto")
            if st.compact_memory:
                opts["memory"] = st.compact_memory
            session.auto_compact(st.compact_threshold, st.compact_ratio, **opts)
            slot.auto = True
        return session

    def _new_session(self, slot: Slot) -> Any:
        session = self.model.session(**self._session_opts())
        memory = self.settings.compact_memory
        if memory and hasattr(session, "record_surprisal") and wants_surprisal(session, memory):
            session.record_surprisal()  # the auto-compaction's pick ranks sentences by surprisal
        return self._setup(session, slot)

    def _load_session(self, path: Path, slot: Slot) -> Any:
        # the cache types and attention path come from the file: compact(memory=) may have moved
        # the session to other types than the settings'
        given = {"flash_attn", "kv_type", "kv_type_k", "kv_type_v"}
        opts = {k: v for k, v in self._session_opts().items() if k not in given}
        return self._setup(self.model.load_session(path, **opts), slot)

    def _swap_path(self, slot: Slot) -> Path:
        folder = self.swap_dir / slot.owner if slot.owner else self.swap_dir  # ids repeat across owners
        folder.mkdir(exist_ok=True)
        return folder / f"{slot.id}.session"

    def _save_and_close(self, slot: Slot) -> None:
        s, slot.session = slot.session, None
        try:
            if s.tokens:
                slot.swap = s.save(self._swap_path(slot))
        finally:
            s.close()

    async def _make_live(self, slot: Slot) -> None:
        if slot.session is not None:
            return
        if not slot.anonymous:
            await self._evict_for_room(slot)
        if slot.swap is not None:
            path, slot.swap = slot.swap, None
            with _naming(path, f"session {slot.id!r} (swapped out)"):
                slot.session = await self.worker.run_to_end(self._load_session, path, slot)
            path.unlink(missing_ok=True)
            self.metrics.inc("pyllamaam_sessions_reloaded_total")
        else:
            slot.session = await self.worker.run_to_end(self._new_session, slot)
        self.metrics.set("pyllamaam_sessions_live", self.n_live)

    async def _evict_for_room(self, keep: Slot) -> None:
        while self.n_live >= self.settings.max_sessions:
            idle = [s for s in self._named.values() if s is not keep and s.session is not None and s.users == 0]
            if not idle:
                raise ApiError(
                    503, f"all {self.settings.max_sessions} live sessions are busy; retry later", "server_busy"
                )
            victim = idle[0]  # least recently used
            await self.worker.run_to_end(self._save_and_close, victim)
            self.metrics.inc("pyllamaam_sessions_evicted_total")
            log.info("session %s saved to disk to make room", victim.id)

    # --- queueing ---
    def _slot_for(self, sid: str | None, prompt: list[int] | None, create: bool, owner: str = "") -> Slot:
        if sid is None:
            return self._anonymous_slot(prompt or [], owner)
        slot = self._named.get((owner, sid))
        if slot is None:
            if not create:
                raise NotFound(f"unknown session {sid!r}")
            slot = self._named[owner, sid] = Slot(sid, owner=owner)
        self._named.move_to_end((owner, sid))
        return slot

    def _anonymous_slot(self, prompt: list[int], owner: str) -> Slot:
        free = [s for s in self._anonymous if not s.lock.locked()]
        # another owner's cache is never reused (cached_tokens would tell its prompt): a free
        # slot of this owner, else a new slot, else another owner's free slot, started over
        mine = [s for s in free if s.owner == owner]
        if mine:
            return max(mine, key=lambda s: _common_prefix(s.session.tokens if s.session else [], prompt))
        if len(self._anonymous) < N_ANONYMOUS:
            self._anonymous.append(Slot(f"~anonymous-{len(self._anonymous)}", anonymous=True, owner=owner))
            return self._anonymous[-1]
        if free:
            return free[0]
        return min(self._anonymous, key=lambda s: s.users)

    async def _enter(self, slot: Slot) -> None:
        """Wait for the slot's lock within the queue bounds; on success the caller must _leave."""
        if self._pending >= self.settings.max_pending:
            self.metrics.inc("pyllamaam_requests_rejected_total", reason="server")
            raise ApiError(503, f"the server has {self._pending} requests in flight; retry later", "server_busy")
        if slot.users > self.settings.queue_size:
            self.metrics.inc("pyllamaam_requests_rejected_total", reason="session")
            raise ApiError(
                429, f"session {slot.id!r} has {slot.users - 1} requests waiting; retry later", "rate_limit_error"
            )
        slot.users += 1
        self._pending += 1
        self.metrics.set("pyllamaam_requests_in_flight", self._pending)
        try:
            await slot.lock.acquire()
        except BaseException:
            self._leave(slot, locked=False)
            raise

    def _leave(self, slot: Slot, locked: bool = True) -> None:
        if locked:
            slot.lock.release()
        slot.users -= 1
        self._pending -= 1
        self.metrics.set("pyllamaam_requests_in_flight", self._pending)

    async def _locked(
        self, sid: str, owner: str, fn: Callable[[Slot], Awaitable[T]], create: bool = False
    ) -> T:
        slot = self._slot_for(sid, None, create, owner)
        await self._enter(slot)
        try:
            if self._named.get((owner, sid)) is not slot:  # deleted while we waited
                if not create:
                    raise NotFound(f"unknown session {sid!r}")
                self._named[owner, sid] = slot
            return await fn(slot)
        finally:
            self._leave(slot)

    # --- session endpoints ---
    async def delete(self, sid: str, owner: str = "") -> None:
        async def drop(slot: Slot) -> None:
            if slot.session is not None:
                await self.worker.run_to_end(slot.session.close)
                slot.session = None
            if slot.swap is not None:
                slot.swap.unlink(missing_ok=True)
            self._named.pop((owner, sid), None)
            self.metrics.set("pyllamaam_sessions_live", self.n_live)

        await self._locked(sid, owner, drop)

    async def compact(self, sid: str, kwargs: dict[str, Any], owner: str = "") -> dict[str, Any]:
        async def run(slot: Slot) -> dict[str, Any]:
            await self._make_live(slot)
            if not hasattr(slot.session, "compact"):
                raise ApiError(400, "compaction is not available in this build of pyllamaam")
            if not {"ratio", "target_cells", "memory"} & set(kwargs):
                if self.settings.compact_memory:
                    kwargs["memory"] = self.settings.compact_memory
                else:
                    kwargs["ratio"] = self.settings.compact_ratio
            t0 = time.perf_counter()
            compact, progress = slot.session.compact, _reporter(slot, "manual")
            progress("starting", 0, 0)
            try:
                report = await self._compacting(slot, compact, progress=progress, **kwargs)
            except TypeError as err:  # an option this library version does not know
                raise ConfigError(f"bad compaction parameters: {err}") from err
            self.metrics.observe_compaction(report, "manual", time.perf_counter() - t0)
            return report_dict(report)

        return await self._locked(sid, owner, run)

    async def save(self, sid: str, path: Path, owner: str = "") -> dict[str, Any]:
        """Save session ``sid`` to ``path`` (from :func:`resolve_name`, so inside the owner's folder)."""

        async def run(slot: Slot) -> dict[str, Any]:
            await self._make_live(slot)
            s = slot.session
            if not s.tokens:
                raise ApiError(409, f"session {sid!r} is empty: nothing to save", "conflict_error")
            with _naming(path, f"saved session {path.name!r}"):
                path.parent.mkdir(parents=True, exist_ok=True)
                await self.worker.run_to_end(s.save, path)
            return {"id": sid, "name": path.name, "n_tokens": len(s.tokens), "n_cells": s.n_cells}

        return await self._locked(sid, owner, run)

    async def restore(self, sid: str, path: Path, owner: str = "") -> dict[str, Any]:
        if not path.is_file():
            raise NotFound(f"no saved session named {path.name!r}")

        async def run(slot: Slot) -> dict[str, Any]:
            with _naming(path, f"saved session {path.name!r}"):
                new = await self.worker.run_to_end(self._load_session, path, slot)
            if slot.session is not None:
                await self.worker.run_to_end(slot.session.close)
                slot.session = None
            if slot.swap is not None:
                slot.swap.unlink(missing_ok=True)
                slot.swap = None
            await self._evict_for_room(slot)
            slot.session = new
            self.metrics.set("pyllamaam_sessions_live", self.n_live)
            return {"id": sid, "name": path.name, "n_tokens": len(new.tokens), "n_cells": new.n_cells}

        return await self._locked(sid, owner, run, create=True)

    # --- generation ---
    async def generate(
        self,
        sid: str | None,
        prompt: list[int],
        params: Params,
        cancelled: Callable[[], Awaitable[bool]] | None = None,
        owner: str = "",
    ) -> AsyncIterator[str | Result]:
        """Yield ``""`` once the prompt is in the cache, then text pieces, then one Result.

        Errors before the first yield (queue full, prompt too long, :class:`ClientGone`) are
        raised to the caller; the session lock is held from the first step until the generator
        ends or is closed. ``cancelled()`` is asked between prompt batches and between tokens:
        once it is true the Result's finish_reason is ``"cancelled"``. Closing the generator or
        cancelling its task stops it too, after the native call under way has returned, so the
        next request finds the session whole (with the tokens made so far in its cache).
        """
        if not prompt:
            raise ConfigError("the prompt is empty")
        slot = self._slot_for(sid, prompt, create=True, owner=owner)
        await self._enter(slot)
        out: list[int] = []
        finish, gone = "", False
        try:
            if sid is not None and self._named.get((owner, sid)) is not slot:  # deleted while we waited
                self._named[owner, sid] = slot
            await self._make_live(slot)
            cached, n_auto0 = await self._feed_prompt(slot, prompt, cancelled, owner)
            self.metrics.inc("pyllamaam_prompt_tokens_total", len(prompt))
            self.metrics.inc("pyllamaam_prompt_tokens_reused_total", cached)
            yield ""
            s = slot.session
            sampler = Sampler(params.temperature, params.top_p, params.seed)
            scanner = StopScanner(params.stop)
            finish, by_string = "length", False
            for _ in range(params.max_tokens):
                if cancelled is not None and await cancelled():
                    finish = "cancelled"
                    break
                tok, text = await self._native(slot, 1, self._step, slot, sampler, out, params.feed_eog)
                if tok is None:
                    finish = text
                    break
                piece, by_string = scanner.push(text)
                if piece:
                    yield piece
                if by_string:
                    finish = "stop"
                    break
            if finish != "cancelled" and not by_string:
                tail = scanner.flush()
                if tail:
                    yield tail
            reports = (getattr(s, "auto_reports", None) or [])[n_auto0:]
            for r in reports:
                self.metrics.observe_compaction(r, "auto", getattr(r, "total_seconds", 0.0))
            yield Result(finish, len(prompt), len(out), cached, [report_dict(r) for r in reports])
        except (ClientGone, asyncio.CancelledError, GeneratorExit):  # the client went away
            gone = True
            raise
        finally:
            if gone or finish == "cancelled":
                self.metrics.inc("pyllamaam_requests_cancelled_total")
            self.metrics.inc("pyllamaam_completion_tokens_total", len(out))
            self._leave(slot)

    async def _feed_prompt(
        self, slot: Slot, prompt: list[int], cancelled: Callable[[], Awaitable[bool]] | None, owner: str
    ) -> tuple[int, int]:
        """Reuse the cache when it holds a prefix of ``prompt`` and ``owner`` made it, start over
        otherwise, and prefill the rest in batches. Returns (tokens reused, auto-compaction
        reports so far)."""
        s = slot.session
        have = s.tokens
        n = _common_prefix(have, prompt) if slot.owner == owner else 0
        slot.owner = owner
        if n < len(have) or n == 0:  # the cache holds tokens the prompt does not: start over
            slot.session = None
            await self.worker.run_to_end(s.close)
            slot.session = s = await self.worker.run_to_end(self._new_session, slot)
            n = 0
        n_auto0 = len(getattr(s, "auto_reports", None) or [])
        if n == len(prompt):
            return n, n_auto0  # the whole prompt is cached and its logits are the session's
        self._check_fits(slot, len(prompt) - n)
        step = max(1, self.settings.n_batch)
        for i in range(n, len(prompt), step):
            if cancelled is not None and await cancelled():
                raise ClientGone()
            chunk = prompt[i : i + step]
            await self._native(slot, len(chunk), self._prefill, slot, chunk)
        return n, n_auto0

    async def _native(self, slot: Slot, n_new: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``slot``'s session, which feeds it ``n_new`` tokens: on the worker, or
        on a compaction thread when the session will compact itself first."""
        will = getattr(slot.session, "compacts_before", None)
        if slot.auto and (will is None or will(n_new)):  # None: it cannot tell, so it may
            return await self._compacting(slot, fn, *args)
        # to the end even when cancelled: the caller releases the session's lock right after
        return await self.worker.run_to_end(fn, *args)

    async def _compacting(self, slot: Slot, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that compacts ``slot``'s session (the caller holds its lock) off the worker."""
        try:
            return await self.compactor.run_to_end(fn, *args, **kwargs)
        finally:
            slot.progress = None

    def _check_fits(self, slot: Slot, n_new: int) -> None:
        s = slot.session
        if not slot.auto and s.n_cells + n_new > s.n_ctx:
            why = "is off" if slot.compactable else "is not available for this model or build"
            raise ApiError(
                400,
                f"the prompt does not fit: {s.n_cells} cells in use + {n_new} new tokens > n_ctx "
                f"{s.n_ctx}, and automatic compaction {why}",
                "context_length_exceeded",
            )

    def _prefill(self, slot: Slot, toks: list[int]) -> None:
        """Prefill on the worker; the session compacts itself first when auto-compaction is on."""
        s = slot.session
        self._check_fits(slot, len(toks))
        try:
            s.prefill(toks)
        except CompactionError as err:
            raise ApiError(
                400,
                f"the prompt does not fit in n_ctx {s.n_ctx} even after compaction: {err}",
                "context_length_exceeded",
            ) from err

    def _step(self, slot: Slot, sampler: Sampler, out: list[int], feed_eog: bool) -> tuple[int | None, str]:
        """Sample one token and feed it (worker): (token, text so far) or (None, finish reason)."""
        s = slot.session
        tok = sampler.sample(s.logits())
        if is_eog(self.model, tok):
            if feed_eog and s.n_cells < s.n_ctx:
                s.prefill([tok])
            return None, "stop"
        if not slot.auto and s.n_cells + 1 > s.n_ctx:
            return None, "length"
        try:
            s.prefill([tok])
        except CompactionError:  # the cache is full and cannot shrink: end like a length limit
            log.warning("session %s: compaction failed mid-generation; stopping", slot.id, exc_info=True)
            return None, "length"
        out.append(tok)
        return tok, self.model.detokenize(out)


def _reporter(slot: Slot, trigger: str) -> Callable[[str, int, int], None]:
    """A compaction's progress callback that publishes its stage in ``slot.progress``."""

    def report(stage: str, done: int, total: int) -> None:
        p = slot.progress
        started = p["started"] if p is not None and p["trigger"] == trigger else time.monotonic()
        slot.progress = {"trigger": trigger, "stage": stage, "done": done, "total": total, "started": started}

    return report


def _progress_view(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "trigger": p["trigger"], "stage": p["stage"], "done": p["done"], "total": p["total"],
        "seconds": round(time.monotonic() - p["started"], 3),
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def resolve_name(state_dir: Path | None, name: str, owner: str = "") -> Path:
    """The file for ``name`` inside ``owner``'s folder of ``state_dir`` (``state_dir`` itself
    without API keys); anything that could escape it is refused."""
    if state_dir is None:
        raise ApiError(400, "no state folder is configured (start the server with --state-dir)")
    if not NAME_PATTERN.match(name) or name in (".", ".."):
        raise ApiError(400, f"bad name {name!r}: use letters, digits, '.', '_' and '-' (no folders)")
    root = Path(state_dir).resolve()
    if owner:
        root = root / owner
    path = (root / name).resolve()
    if path.parent != root or os.path.islink(root / name):
        raise ApiError(400, f"the name {name!r} escapes the state folder")
    return path


@contextmanager
def _naming(path: Path, what: str) -> Iterator[None]:
    """Re-raise the library's errors about ``path`` naming ``what`` instead: its messages embed
    the file, which is the server's business (the status still comes from the error's type)."""
    try:
        yield
    except StateError as err:
        raise ApiError(409, str(err).replace(str(path), what), "state_error") from err
    except OSError as err:
        log.error("%s: %s", what, err)
        raise ApiError(500, f"{what}: the server could not write or read it", "server_error") from err
