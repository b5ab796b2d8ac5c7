"""Model and Session: one native handle each, freed by ``close()`` or ``with``.

A Session is one llama.cpp context holding one sequence (id 0). Its KV cache carries the
per-(layer, KV head, cell) bias of the patched library, and its query capture copies out the q
that attention really uses when asked (no per-node callback: the graph marks q as an output).
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import _native, catalog, kvtypes, statefile
from .errors import ConfigError, NativeError, PyllamaamError, StateError, UnsupportedLayout
from .kv import KVState, build_seq_state, parse_seq_state

#: tokens per llama_decode while every token's logits are wanted (surprisal): llama.cpp's output
#: buffer holds that many rows of n_vocab floats (Qwen2.5: 39 MB at 64), and on 2 CPU threads
#: pieces of 64 read faster than of 512 (2K tokens: SmolLM2-135M 1.06-1.17x / 1.17-1.23x,
#: Qwen2.5-0.5B 1.24x / 1.55x of a plain prefill's time)
NLL_PIECE = 64


def _nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each row's negative log-likelihood of its target, float32, the rows overwritten (log-softmax
    in place: no float64 copy of [rows, n_vocab])."""
    np.subtract(logits, logits.max(axis=1)[:, None], out=logits)
    hit = logits[np.arange(len(targets)), targets]
    np.exp(logits, out=logits)
    return np.log(logits.sum(axis=1)) - hit


def load_model(path: str | os.PathLike | None = None, **opts: Any) -> Model:
    """Load a GGUF model.

    ``None`` is the default model (SmolLM2-135M-Instruct Q4_1), ``"gemma3-270m"`` the catalog's
    Gemma-3-270M; any other string is a path to a .gguf file. ``opts``: ``n_gpu_layers`` (0),
    ``use_mmap`` (True).
    """
    return Model(catalog.resolve_model(path), **opts)


@dataclasses.dataclass(frozen=True)
class KVBytes:
    """Bytes of a KV cache's storage (:meth:`Session.kv_bytes`): K, V and the per-cell bias."""

    k: int
    v: int
    bias: int

    @property
    def total(self) -> int:
        return self.k + self.v + self.bias


class Model:
    """A loaded GGUF model (``llama_model``)."""

    def __init__(self, path: str | os.PathLike, *, n_gpu_layers: int = 0, use_mmap: bool = True) -> None:
        self.path = catalog.check_gguf(path)
        self._ptr: int | None = _native.model_load(self.path, n_gpu_layers, use_mmap)
        self.info = _native.model_info(self._ptr)
        self.n_gpu_layers = n_gpu_layers
        # sessions hold contexts on this model: they are freed before it
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()

    # --- handle ---
    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise PyllamaamError("the model is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            for s in list(self._sessions):
                s.close()
            _native.model_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- facts ---
    @property
    def arch(self) -> str:
        return self.info["arch"]

    @property
    def n_layer(self) -> int:
        return self.info["n_layer"]

    @property
    def n_vocab(self) -> int:
        return self.info["n_vocab"]

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the weights, stored in saved sessions."""
        i = self.info
        return {k: i[k] for k in ("arch", "n_layer", "n_embd", "n_vocab", "n_params", "size")}

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        return _native.tokenize(self.ptr, text, add_bos, special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return _native.detokenize(self.ptr, list(tokens))

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        return _native.is_eog(self.ptr, token)

    def session(
        self,
        n_ctx: int = 4096,
        flash_attn: bool = False,
        n_threads: int | None = None,
        kv_type: str | None = None,
        n_batch: int = 512,
        *,
        kv_type_k: str | None = None,
        kv_type_v: str | None = None,
        bias_storage: bool = True,
    ) -> Session:
        """A new session (one llama.cpp context). ``kv_type`` sets the cache type of both K and V;
        ``kv_type_k`` / ``kv_type_v`` set one each (llama.cpp's ``-ctk`` / ``-ctv``; default f16):
        any name of :data:`pyllamaam.kvtypes.BY_NAME`. A quantized V needs ``flash_attn=True``, as in
        llama.cpp. ``bias_storage=False``: a context without the per-cell bias (llama.cpp's own
        graphs and bytes); a compaction that fits biases moves the session to one that has it."""
        return Session(
            self, n_ctx=n_ctx, flash_attn=flash_attn, n_threads=n_threads, kv_type=kv_type, n_batch=n_batch,
            kv_type_k=kv_type_k, kv_type_v=kv_type_v, bias_storage=bias_storage,
        )

    def load_session(self, path: str | os.PathLike, **opts: Any) -> Session:
        """A new session holding the state saved by :meth:`Session.save`."""
        saved = statefile.read(path)
        statefile.check_model(saved, self.fingerprint(), path)
        h = saved.header
        opts.setdefault("n_ctx", h["n_ctx"])
        opts.setdefault("flash_attn", h["flash_attn"])
        if all(opts.get(k) is None for k in ("kv_type", "kv_type_k", "kv_type_v")):
            opts["kv_type_k"], opts["kv_type_v"] = statefile.kv_types(h)
        opts.setdefault("bias_storage", statefile.bias_storage(h))
        s = self.session(**opts)
        try:
            s._restore(saved, path)
        except BaseException:
            s.close()
            raise
        return s


class Session:
    """One llama.cpp context with one sequence; see :meth:`Model.session`."""

    # opt-in modes (class defaults: off); see capture_context_queries() and auto_compact()
    _ctx_queries: Any = None
    _auto: dict[str, Any] | None = None
    _recording = False
    _maybe_biased = False  # a non-zero bias was written since the context was made (holds_bias reads it)

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int = 4096,
        flash_attn: bool = False,
        n_threads: int | None = None,
        kv_type: str | None = None,
        n_batch: int = 512,
        kv_type_k: str | None = None,
        kv_type_v: str | None = None,
        bias_storage: bool = True,
    ) -> None:
        self.kv_type_k, self.kv_type_v = kvtypes.resolve(kv_type, kv_type_k, kv_type_v, flash_attn)
        if not isinstance(bias_storage, bool):
            raise ConfigError(f"bias_storage must be True or False, not {bias_storage!r}")
        #: whether the context stores a bias per cell and KV head (compaction's fitted beta)
        self.bias_storage = bias_storage
        if n_ctx < 16:
            raise ConfigError(f"n_ctx must be at least 16, not {n_ctx}")
        self.model = model
        self.n_ctx = int(n_ctx)
        self.flash_attn = bool(flash_attn)
        self.n_batch = int(min(n_batch, n_ctx))
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        # query capture: layer -> list of [n_tokens, n_head, head_dim], filled by prefill()
        self._capture: dict[int, list[np.ndarray]] | None = None
        self._capturing = False  # the native capture mode
        self._ctx: int | None = None
        try:
            self._ctx = self._new_context(flags=self._flags)
        except NativeError as err:
            raise self._explain_refusal(err) from err
        self.n_ctx = _native.n_ctx(self._ctx)  # llama.cpp may round it up
        model._sessions.add(self)
        self._tokens: list[int] = []
        self._n_cells = 0
        self._last_logits: np.ndarray | None = None
        # each token's surprisal as the session read it, from the first token on, while
        # record_surprisal() is on and every token so far was recorded (else the text is read again)
        self._nll = np.zeros(0, np.float32)
        self.layers = [_native.layer_info(self._ctx, il) for il in range(model.n_layer)]

    @property
    def _flags(self) -> int:
        return _native.FLAG_BIAS if self.bias_storage else 0

    def _new_context(self, flags: int, probe: Any = None, probe_key: int = 0) -> int:
        return _native.context_new(
            self.model.ptr,
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            n_threads=self.n_threads,
            flash_attn=self.flash_attn,
            kv_type_k=self.kv_type_k,
            kv_type_v=self.kv_type_v,
            flags=flags,
            probe=probe,
            probe_key=probe_key,
        )

    def _explain_refusal(self, err: NativeError) -> PyllamaamError:
        """ConfigError when llama.cpp refused a quantized type whose blocks do not divide a head
        (it checks that with flash attention); ``err`` otherwise. A context with f16 caches
        tells the head sizes."""
        quantized = [
            (w, kvtypes.TYPES[kvtypes.BY_NAME[n]]) for w, n in (("K", self.kv_type_k), ("V", self.kv_type_v))
            if kvtypes.TYPES[kvtypes.BY_NAME[n]].quantized
        ]
        if not (self.flash_attn and quantized):
            return err
        try:
            ctx = _native.context_new(
                self.model.ptr, n_ctx=16, n_batch=16, n_threads=1, flash_attn=True, kv_type_k="f16",
                kv_type_v="f16", flags=0,
            )
        except NativeError:
            return err
        try:
            dims = [_native.layer_info(ctx, il) for il in range(self.model.n_layer)]
        finally:
            _native.context_free(ctx)
        for which, t in quantized:
            for il, li in enumerate(dims):
                d = li[f"head_dim_{which.lower()}"]
                if d and d % t.block:
                    return ConfigError(
                        f"{which} cache type {t.name} stores blocks of {t.block} values, which do not divide "
                        f"layer {il}'s head size {d}; llama.cpp refuses it with flash attention"
                    )
        return err

    @property
    def kv_type(self) -> str | None:
        """The cache type of K and V when they are the same, else None (see kv_type_k, kv_type_v)."""
        return self.kv_type_k if self.kv_type_k == self.kv_type_v else None

    def kv_bytes(
        self, detail: bool = False, n_cells: int | None = None, kv_type_k: str | None = None,
        kv_type_v: str | None = None, bias_storage: bool | None = None,
    ) -> int | KVBytes:
        """Bytes of K, V and bias storage of the compactable cache's cells in use (``n_cells``:
        that many instead; ``kv_type_k``/``kv_type_v``: in those types instead; ``bias_storage``:
        with or without the bias instead of as the context has it), from each layer's row sizes;
        ``detail=True``: a :class:`KVBytes`."""
        biased = self.bias_storage if bias_storage is None else bias_storage
        n = self._n_cells if n_cells is None else int(n_cells)
        tk = kvtypes.TYPES[kvtypes.BY_NAME[kv_type_k or self.kv_type_k]]
        tv = kvtypes.TYPES[kvtypes.BY_NAME[kv_type_v or self.kv_type_v]]
        k = v = b = 0
        for il in self.compact_layers():
            li = self.layers[il]
            h = li["n_head_kv"]
            k += tk.row_bytes(h * li["head_dim_k"])
            v += tv.row_bytes(h * li["head_dim_v"])
            b += 4 * h if biased else 0  # the bias: F32 per cell and KV head, in every compactable layer
        out = KVBytes(k=n * k, v=n * v, bias=n * b)
        return out if detail else out.total

    def kv_bytes_f16(self, n_cells: int | None = None) -> int:
        """Bytes of an f16 K and V cache without bias (llama.cpp's default) for the same layers and
        ``n_cells`` cells (default: the full cache of the context, one cell per position so far)."""
        n = self.n_past if n_cells is None else int(n_cells)
        f16 = kvtypes.TYPES[kvtypes.F16]
        return n * sum(
            f16.row_bytes(li["n_head_kv"] * (li["head_dim_k"] + li["head_dim_v"]))
            for li in (self.layers[il] for il in self.compact_layers())
        )

    # --- handle ---
    @property
    def ctx(self) -> int:
        if self._ctx is None:
            raise PyllamaamError("the session is closed")
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            _native.context_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- bookkeeping ---
    @property
    def n_past(self) -> int:
        """The next logical position (one past the last token's position)."""
        return _native.seq_pos_max(self.ctx) + 1

    @property
    def n_cells(self) -> int:
        """Physical cells in use in the compactable cache."""
        return self._n_cells

    @property
    def tokens(self) -> list[int]:
        """The tokens fed so far (the logical context, also after compaction)."""
        return list(self._tokens)

    @property
    def memory_layout(self) -> str:
        return _native.layout(self.ctx)

    @property
    def can_compact(self) -> bool:
        return self._gate()[0] == _native.GATE_OK

    @property
    def gate_reason(self) -> str:
        return self._gate()[1]

    def _gate(self) -> tuple[int, str]:
        """llama.cpp's verdict on compacting this context. Without bias storage (on purpose) it can
        be compacted where every compactable layer reads its cells as the biased path would: a
        compaction that fits a bias moves the session to a context that stores one first."""
        code, why = _native.gate(self.ctx)
        if code != _native.GATE_NO_BIAS or self.bias_storage:
            return code, why
        for il in self.compact_layers():
            if not math.isfinite(self.layers[il]["kq_scale"]):
                return _native.GATE_GRAPH, (f"layer {il} of {self.model.arch} does not take the bias in its "
                                            "attention (kq_b, sinks or a custom attention graph)")
        return _native.GATE_OK, ""

    def compact_layers(self) -> list[int]:
        """Model layers whose cells live in the compactable (biased) cache."""
        return [il for il, li in enumerate(self.layers) if li["flags"] & _native.LAYER_BIAS_CACHE]

    def kq_scale(self, il: int) -> float:
        return self.layers[il]["kq_scale"]

    # --- decoding ---
    def _as_tokens(self, text_or_ids: str | Sequence[int], bos: bool) -> list[int]:
        if isinstance(text_or_ids, str):
            return self.model.tokenize(text_or_ids, add_bos=bos and self.model.info["add_bos"])
        toks = [int(t) for t in text_or_ids]
        if any(t < 0 or t >= self.model.n_vocab for t in toks):
            raise ConfigError(f"token ids must be in [0, {self.model.n_vocab})")
        return toks

    def _check_room(self, n: int) -> None:
        if self._n_cells + n > self.n_ctx:
            raise ConfigError(
                f"{n} more tokens do not fit: {self._n_cells} of {self.n_ctx} cells in use "
                "(compact the session or use a larger n_ctx)"
            )

    def prefill(self, text_or_token_ids: str | Sequence[int]) -> int:
        """Feed text (tokenized, BOS first on an empty session) or token ids; returns the count."""
        toks = self._as_tokens(text_or_token_ids, bos=self.n_past == 0)
        if not toks:
            return 0
        if self._auto is not None:
            from . import pipeline

            auto, self._auto = self._auto, None  # inner prefills and compactions run in the plain mode
            try:
                return pipeline.auto_prefill(self, toks, auto)
            finally:
                self._auto = auto
        self._check_room(len(toks))
        if self._ctx_queries is not None and self._capture is None:
            return self._prefill_capturing_context(toks)
        self._sync_capture()
        ids = np.asarray(toks, dtype=np.int32)
        if self._recording and len(self._nll) == len(self._tokens) and (self._last_logits is not None
                                                                         or not self._tokens):
            nll, self._last_logits = self._read_nll(ids, self.n_past, self._last_logits, self._capture)
            self._nll = np.concatenate([self._nll, nll])
        else:
            self._last_logits = _native.decode(self.ctx, ids, self.n_past, self.n_batch, False, self._capture)[-1]
        self._tokens += toks
        self._n_cells += len(toks)
        return len(toks)

    def logits(self) -> np.ndarray:
        """Next-token logits (float32 [n_vocab]) after the last token fed."""
        if self._last_logits is None:
            raise PyllamaamError("no logits yet: prefill something first")
        return self._last_logits.copy()

    def drop_last(self, n: int) -> bool:
        """Remove the last ``n`` tokens from the cache and from :attr:`tokens` (cells that hold one
        token each at its own position, as prefill left them); False, with nothing removed, where
        the memory cannot (recurrent state). :meth:`logits` has nothing until the next prefill."""
        if not 1 <= n <= min(self._n_cells, len(self._tokens)):
            raise ConfigError(f"cannot drop the last {n} tokens of {self._n_cells} cells")
        if not _native.seq_rm(self.ctx, self.n_past - n, -1):
            return False
        self._tokens = self._tokens[:-n]
        self._nll = self._nll[: len(self._tokens)]
        self._n_cells -= n
        self._last_logits = None
        return True

    @contextmanager
    def scratch(self, snapshot: bytes | None = None) -> Iterator[Session]:
        """Run forward passes after the context inside the block, then restore the session
        exactly: state, :attr:`tokens`, cell count and logits. Automatic compaction, context-query
        capture and surprisal recording are paused inside: scratch passes are not context.

        ``snapshot``: this session's :meth:`snapshot`, where the caller holds it (each is a copy of
        the whole cache: 0.3 s at 4K tokens on SmolLM2)."""
        blob = self.snapshot() if snapshot is None else snapshot
        n_cells, tokens, last, nll = self._n_cells, list(self._tokens), self._last_logits, self._nll
        auto, ctxq, recording = self._auto, self._ctx_queries, self._recording
        self._auto, self._ctx_queries, self._recording = None, None, False
        try:
            yield self
        finally:
            self._auto, self._ctx_queries, self._recording, self._nll = auto, ctxq, recording, nll
            # the blob is this context's own state: no second copy is taken to roll back to
            self.write_state(blob, n_cells, old=blob)
            self._tokens, self._last_logits = tokens, last

    def twin(self, n_new: int, flash_attn: bool = True, kv: KVState | None = None) -> Session:
        """A new session holding this one's cells and tokens, with room for ``n_new`` more tokens,
        with or without flash attention; the caller closes it. ``kv``: this session's
        :meth:`get_kv`, where the caller holds it.

        A plain KV cache can be copied, and iSWA memory (its sliding-window cache follows in the
        V layout of the copy); UnsupportedLayout for other memories, and PyllamaamError where
        llama.cpp refuses the copy (no flash attention here, no memory for it)."""
        layout = self.memory_layout
        if not (layout == "iswa" or layout == "kv" and len(self.compact_layers()) == len(self.layers)):
            raise UnsupportedLayout(f"a {layout} memory cannot be copied into another session")
        kv = self.get_kv() if kv is None else kv
        if layout == "iswa" and flash_attn != self.flash_attn:  # flash attention keeps V untransposed
            from . import retype

            types = (self.kv_type_k, self.kv_type_v)
            tail = retype.convert_section(kv.tail, retype.swa_heads(self.layers), types, types, v_trans=not flash_attn)
            kv = dataclasses.replace(kv, tail=tail)
        twin = self.model.session(
            n_ctx=self._n_cells + n_new + 1, flash_attn=flash_attn, n_threads=self.n_threads,
            kv_type_k=self.kv_type_k, kv_type_v=self.kv_type_v, n_batch=self.n_batch,
            bias_storage=self.bias_storage,
        )
        try:
            twin._write_kv(kv)
        except BaseException:
            twin.close()
            raise
        twin._tokens = list(self._tokens)
        return twin

    def eval_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits after each of ``token_ids`` appended (float32 [n, n_vocab]); the session is unchanged."""
        toks = self._as_tokens(token_ids, bos=False)
        if not toks:
            return np.zeros((0, self.model.n_vocab), dtype=np.float32)
        self._check_room(len(toks))
        pos0 = self.n_past
        self._sync_capture()
        # a plain cache drops the new cells; iSWA and recurrent state change in place: snapshot
        snapshot = None if self.memory_layout == "kv" else _native.state_get(self.ctx)
        try:
            return _native.decode(self.ctx, np.asarray(toks, dtype=np.int32), pos0, self.n_batch, True)
        finally:
            if snapshot is None:
                _native.seq_rm(self.ctx, pos0, -1)
            else:
                _native.state_set(self.ctx, snapshot)

    def record_surprisal(self) -> None:
        """From now on, record each token's surprisal as the session reads it: every prefill (and
        generated token) asks llama.cpp for every token's logits, in pieces of :data:`NLL_PIECE`
        tokens, and :meth:`token_nll` returns what was recorded instead of reading the text again
        (``span_score="cache+surprisal"``, the table's pick of ``compact(memory=)`` for some models
        and targets: :func:`pyllamaam.memory.wants_surprisal`). It costs a fraction of each prefill
        (the output layer on every token) where a later read costs a whole prefill and more.

        Turn it on before the first prefill: the record counts only from the text's first token on.
        Tokens read after a compaction are recorded given the compacted cache, as the model read them.
        :meth:`save` keeps the record and the mode, and a restored session goes on recording."""
        if self._tokens:
            raise ConfigError("record_surprisal() must come before the first prefill: the record starts at the "
                              f"text's first token, and {len(self._tokens)} tokens were read without it")
        self._recording = True

    @property
    def surprisal_recorded(self) -> bool:
        """Whether the record of :meth:`record_surprisal` covers every token read so far (then
        :meth:`token_nll` reads nothing again)."""
        return len(self._nll) >= len(self._tokens)

    def _read_nll(self, ids: np.ndarray, pos0: int, before: np.ndarray | None,
                  capture: dict[int, list[np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``ids`` at positions ``pos0``.. with every token's logits, in pieces of
        :data:`NLL_PIECE` (llama.cpp keeps that many rows of n_vocab floats); returns each token's
        negative log-likelihood (float32; the first given the logits ``before`` it, 0 without) and
        the logits after the last token."""
        nll = np.zeros(len(ids), np.float32)
        step = min(self.n_batch, NLL_PIECE)
        for s in range(0, len(ids), step):
            m = min(step, len(ids) - s)
            logits = _native.decode(self.ctx, ids[s : s + m], pos0 + s, step, True, capture)
            if before is not None:
                nll[s] = _nll_rows(before[None].copy(), ids[s : s + 1])[0]
            before = logits[-1].copy()
            nll[s + 1 : s + m] = _nll_rows(logits[:-1], ids[s + 1 : s + m])
        return nll, before

    def token_nll(self, n: int | None = None) -> np.ndarray:
        """The surprisal of the session's text: the negative log-likelihood (nats, float32 [n]) of
        each of the first ``n`` :attr:`tokens` (all by default) given the tokens before it; the
        first token scores 0. What :meth:`record_surprisal` recorded where it covers them; else the
        tokens are read again from the start in a scratch pass (a prefill's work plus the output
        layer on every token) and the session is unchanged."""
        toks = np.asarray(self._tokens if n is None else self._tokens[:n], dtype=np.int32)
        if len(self._nll) >= len(toks):
            return self._nll[: len(toks)].copy()
        if len(toks) > self.n_ctx:
            raise ConfigError(f"{len(toks)} tokens do not fit in the {self.n_ctx} cells of the context to read again")
        if len(toks) < 2:
            return np.zeros(len(toks), np.float32)
        with self.scratch():
            if not _native.seq_rm(self.ctx, 0, -1):
                raise PyllamaamError("llama.cpp could not clear the cache for a scratch read of the text")
            return self._read_nll(toks, 0, None)[0]

    def score(self, text: str | Sequence[int]) -> float:
        """Mean negative log-likelihood per token of ``text`` given the current state (nats)."""
        toks = self._as_tokens(text, bos=False)
        if not toks:
            raise ConfigError("score() needs at least one token")
        logits = np.concatenate([self.logits()[None], self.eval_logits(toks[:-1])]).astype(np.float64)
        m = logits.max(axis=1)
        lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
        return float(np.mean(lse - logits[np.arange(len(toks)), toks]))

    def generate(
        self,
        prompt: str | Sequence[int] = "",
        max_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """Feed ``prompt``, then decode up to ``max_tokens`` (greedy at temperature 0)."""
        if prompt:
            self.prefill(prompt)
        rng = np.random.default_rng(seed)
        out: list[int] = []
        text = ""
        for _ in range(max_tokens):
            logits = self.logits().astype(np.float64)
            if temperature <= 0:
                tok = int(np.argmax(logits))
            else:
                p = np.exp((logits - logits.max()) / temperature)
                tok = int(rng.choice(len(p), p=p / p.sum()))
            if self.model.is_eog(tok):
                break
            if self._n_cells + 1 > self.n_ctx:
                break
            self.prefill([tok])
            out.append(tok)
            text = self.model.detokenize(out)
            if stop and any(s in text for s in stop):
                text = text[: min(text.index(s) for s in stop if s in text)]
                break
        return text

    # --- query capture ---
    def _sync_capture(self) -> None:
        # native capture stays on while anyone collects queries (capture_queries and the query
        # sources that set _capture, or context-query mode): each switch reserves the graphs again
        want = self._capture is not None or self._ctx_queries is not None
        if want != self._capturing:
            _native.capture_set(self.ctx, want)
            self._capturing = want

    def capture_nodes(self, names: Sequence[str], token_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """Debugging aid: eval ``token_ids`` (session unchanged) and return the named F32 graph
        nodes (e.g. ``"kqv_out-0"``, the attention output of layer 0), flat, one row per ubatch.

        Sessions install no per-node callback (it splits the graph at every node it watches), so
        this runs on a temporary twin context that has one, loaded with this session's state."""
        toks = self._as_tokens(token_ids, bos=False)
        self._check_room(len(toks))
        nodes: dict[str, list[np.ndarray]] = {n: [] for n in names}

        def on_eval(t: Any, ask: bool) -> bool:
            name = _native.node_name(t)
            if ask:
                return name in nodes
            data = _native.node_read_f32(t)
            if data is not None:
                nodes[name].append(data)
            return True

        key = id(nodes)
        twin = self._new_context(flags=self._flags, probe=on_eval, probe_key=key)
        try:
            _native.state_set(twin, self.snapshot())
            _native.decode(twin, np.asarray(toks, dtype=np.int32), self.n_past, self.n_batch, True)
        finally:
            _native.context_free(twin, key)
        return {n: np.stack(v) for n, v in nodes.items() if v}

    @contextmanager
    def capturing(self) -> Iterator[dict[int, list[np.ndarray]]]:
        """Collect the q each layer's attention uses in every decode inside the block (prefill,
        generate): yields ``{layer: [one [n_tokens, n_head, head_dim] array per decode]}``."""
        self._capture = got = {}
        try:
            yield got
        finally:
            self._capture = None

    def capture_queries(self, text_or_token_ids: str | Sequence[int]) -> dict[int, np.ndarray]:
        """Prefill and return the q each layer's attention used: {layer: [n_tokens, n_head, head_dim]}."""
        with self.capturing() as got:
            self.prefill(text_or_token_ids)
            return {il: np.concatenate(qs) for il, qs in sorted(got.items())}

    # --- compaction ---
    def capture_context_queries(self, cap: int = 4096) -> None:
        """Keep the queries of every later prefill (at most ``cap`` tokens per layer, evenly
        subsampled) as the free ``queries="context"`` source of :meth:`compact`."""
        from .queries.context import QueryBuffer

        self._ctx_queries = QueryBuffer(cap)

    def context_queries(self) -> dict[int, np.ndarray]:
        """The queries kept since :meth:`capture_context_queries`, ``{layer: [n, n_head, head_dim]}``
        (empty where that mode is off or nothing was fed since)."""
        return {} if self._ctx_queries is None else self._ctx_queries.get()

    def _prefill_capturing_context(self, toks: list[int]) -> int:
        buf, self._ctx_queries = self._ctx_queries, None
        try:
            with self.capturing() as got:
                n = self.prefill(toks)
            buf.add(got)
        finally:
            self._ctx_queries = buf
        return n

    def compact(
        self,
        ratio: float | None = None,
        target_cells: int | None = None,
        method: str = "am",
        queries: str | None = None,
        keep_first: int = 4,
        keep_last: int = 32,
        budgets: Any = None,
        task: str | None = None,
        verify: bool = True,
        progress: Callable[[str, int, int], None] | None = None,
        memory: float | None = None,
        **options: Any,
    ) -> Any:
        """Compact the KV cache in place; returns a :class:`~pyllamaam.report.CompactionReport`.

        ``memory`` instead of ``ratio``: leave the cache that many times smaller in bytes than the
        f16 full cache, choosing the cache types, cell count and method from the measured table
        (:mod:`pyllamaam.memory`); the session moves to those types (:meth:`retype`).

        ``ratio`` = span cells before / after (or ``target_cells`` = all cells after); ``method``
        ``"am"`` (whole sentences kept in every layer and head, ``spans`` of the budget, chosen by
        the cache's own scores and a repeat pass over the best half of the text: options
        ``span_score``, ``span_candidates``; Attention Matching fits biases and values for the
        rest; ``spans=0``: per-head attn-rms selection with an exact recent window) or any
        selection method of :func:`pyllamaam.compact.available_methods` (baselines keep original
        values). ``task``: the question that will follow; alone it makes the compaction
        question-aware (its queries choose the sentences). ``queries``
        ``"repeat"``, ``"context"``, ``"self-study"``, ``"task"``, ``"tail"``, a mix like
        ``"repeat+context"``, or queries captured earlier by :meth:`reference_queries`; None:
        ``"repeat"`` for fitted methods, ``"tail"`` (the context's last tokens read again, SnapKV's
        observation window) for the eviction baselines where the memory allows it. The first
        ``keep_first`` and last ``keep_last`` cells stay verbatim.
        ``budgets``: ``None``/``"uniform"`` (every head alike), ``"shipped"`` (the model's file in
        ``models/budgets/``), or per-head proportions (a JSON path or a mapping); see ``budget_cells``.
        Gates (``max_kl``, ``max_attention_error``) and kernel options go in ``options``. On any
        failure the original cache is restored and the report says ``fell_back=True``.
        ``progress(stage, done, total)`` is called at the stage boundaries (:mod:`pyllamaam.progress`).
        Raises UnsupportedLayout for memories that cannot be compacted, ConfigError for bad
        arguments (the cache is then unchanged too).
        """
        from . import pipeline

        if memory is not None:
            from . import memory as memory_

            if ratio is not None or target_cells is not None:
                raise ConfigError("give one of ratio=, target_cells= and memory=")
            return memory_.compact_to(
                self, memory, method=method, queries=queries, keep_first=keep_first, keep_last=keep_last,
                budgets=budgets, task=task, verify=verify, progress=progress, **options,
            )
        return pipeline.compact(
            self, ratio, target_cells, method, queries, keep_first, keep_last, budgets, task, verify, progress,
            **options,
        )

    def retype(self, kv_type_k: str | None = None, kv_type_v: str | None = None, flash_attn: bool | None = None,
               *, bias_storage: bool | None = None) -> None:
        """Move the cache to other KV cache types (llama.cpp's ``-ctk``/``-ctv``; ``kv_type_k``
        None: as it is; ``kv_type_v`` defaults to ``kv_type_k``), in place: a new context of those
        types receives the state, moved into the basis they store (:mod:`pyllamaam.retype`), and
        the old context is freed only once the new one predicts the next tokens as the old one did
        (mean KL <= ``retype.MAX_KL`` on a probe of the session's last tokens). A quantized V turns
        flash attention on; ``flash_attn`` sets it otherwise, ``bias_storage`` whether the new
        context stores a bias per cell (None: as it is; a cache holding a non-zero bias cannot drop
        it). A plain cache, iSWA (both of its caches move) and hybrid (the attention cache moves)
        can. Raises ConfigError for a bad type or another layout and StateError when the move
        fails its check; the session is then unchanged."""
        from . import retype as retype_
        from .pipeline import mean_kl

        if kv_type_k is None:  # the types as they are
            kv_type_k, kv_type_v = self.kv_type_k, kv_type_v or self.kv_type_v
        v_name = kv_type_v or kv_type_k
        flash = (self.flash_attn if flash_attn is None else bool(flash_attn)) or kvtypes.needs_flash(v_name)
        k, v = kvtypes.resolve(None, kv_type_k, v_name, flash)
        biased = self.bias_storage if bias_storage is None else bias_storage
        if not isinstance(biased, bool):
            raise ConfigError(f"bias_storage must be True, False or None, not {bias_storage!r}")
        if (k, v, flash, biased) == (self.kv_type_k, self.kv_type_v, self.flash_attn, self.bias_storage):
            return
        layout = self.memory_layout
        if layout not in ("kv", "iswa", "hybrid"):
            raise ConfigError(f"moving a {layout} cache to other types is not supported")
        state = None
        if self._n_cells:
            src = (self.kv_type_k, self.kv_type_v)
            state = retype_.convert(self.get_kv(), src, (k, v))
            if not biased and state.holds_bias():
                raise StateError("the cache holds a fitted bias: a context without bias storage cannot hold it; "
                                 "it is unchanged")
            if layout == "iswa":  # the sliding-window cache follows, in the same types (a hybrid's
                # recurrent state is F32 whatever the cache types: it stays as it is)
                state.tail = retype_.convert_section(state.tail, retype_.swa_heads(self.layers), src, (k, v),
                                                     v_trans=not flash, with_bias=None if biased else False)
        probe = self._tokens[-4:]
        before = self.eval_logits(probe) if state is not None and probe else None
        old = (self._ctx, self.kv_type_k, self.kv_type_v, self.flash_attn, self.bias_storage)
        self.kv_type_k, self.kv_type_v, self.flash_attn, self.bias_storage = k, v, flash, biased
        try:
            self._ctx = self._new_context(flags=self._flags)
            if state is not None:
                self._write_kv(state)
            if before is not None:
                kl = mean_kl(before, self.eval_logits(probe))
                if not kl <= retype_.MAX_KL:
                    raise StateError(f"the cache moved to {k}/{v} predicts differently (KL {kl:.3g} nats)")
        except (NativeError, StateError) as err:
            if self._ctx != old[0]:
                _native.context_free(self._ctx)
            self._ctx, self.kv_type_k, self.kv_type_v, self.flash_attn, self.bias_storage = old
            raise StateError(f"could not move the cache to {k}/{v}; it is unchanged: {err}") from err
        _native.context_free(old[0])

    def reference_queries(
        self, queries: str = "repeat", keep_first: int = 4, keep_last: int = 32, task: str | None = None, **options: Any
    ) -> Any:
        """Capture reference queries once for several :meth:`compact` calls on this same cache
        (e.g. after :meth:`restore`): pass the result as ``compact(queries=...)``; the session
        is unchanged. Returns a :class:`~pyllamaam.pipeline.ReferenceQueries`."""
        from . import pipeline

        return pipeline.reference_queries(self, queries, keep_first, keep_last, task, **options)

    def kept_text(self, report: Any) -> list[str]:
        """The text of each passage a compaction kept verbatim (``report.verbatim``), from the
        tokens this session was fed; a fact whose tokens are not in one was not kept as it was."""
        n = len(self._tokens)
        return [self.model.detokenize(self._tokens[a : min(b + 1, n)]) for a, b in report.verbatim if a < n]

    def auto_compact(self, threshold: float | None = 0.9, ratio: float = 4.0, **compact_options: Any) -> None:
        """Compact automatically whenever prefill()/generate() would pass ``threshold * n_ctx``
        cells, so the session runs past n_ctx; ``threshold=None`` turns it off. Reports of the
        automatic compactions accumulate in ``self.auto_reports``. ``memory=M`` in
        ``compact_options`` instead of ``ratio``: each compaction leaves the cells it found in
        M times fewer bytes than an f16 cache of them (:meth:`compact`'s ``memory``); where the
        table's pick ranks by surprisal, an empty session records it from then on
        (:meth:`record_surprisal`: past n_ctx the text cannot be read again)."""
        from . import memory, pipeline

        self._auto = pipeline.auto_settings(self, threshold, ratio, compact_options)
        if self._auto is not None:
            self.auto_reports = []
            target, task = compact_options.get("memory"), "task" in compact_options
            if target is not None and not self._tokens and memory.wants_surprisal(self, target, task):
                self._recording = True

    def compacts_before(self, n_tokens: int) -> bool:
        """True when feeding ``n_tokens`` more would first run an automatic compaction."""
        return self._auto is not None and self._n_cells + n_tokens > self._auto["limit"]

    # --- KV state ---
    def snapshot(self) -> bytes:
        """The whole state as llama.cpp serializes it (a copy of the cache): what
        :meth:`write_state` restores and :meth:`get_kv` parses."""
        return _native.state_get(self.ctx)

    def get_kv(self, snapshot: bytes | None = None) -> KVState:
        """The compactable cells of the sequence as float32 arrays (see :class:`KVState`);
        ``snapshot``: this session's :meth:`snapshot`, where the caller holds it (one read of the
        state then serves both)."""
        layers = self.compact_layers()
        if not layers:
            raise UnsupportedLayout(self.gate_reason)
        heads = {il: self.layers[il]["n_head_kv"] for il in layers}
        return parse_seq_state(self.snapshot() if snapshot is None else snapshot, layers, heads)

    def set_kv(self, state: KVState, old: bytes | None = None) -> None:
        """Write ``state`` back (any subset of the cells, new values and biases).

        The cell at position ``n_past - 1`` must be kept: llama.cpp continues after it. On any
        failure the previous state is restored and :class:`StateError` is raised; ``old``: this
        session's :meth:`snapshot`, where the caller holds it (else one is taken).
        """
        self._check_kv(state)
        self._write_kv(state, old)

    def _check_kv(self, state: KVState) -> None:
        """:meth:`set_kv`'s checks of ``state`` (StateError)."""
        last = self.n_past - 1
        pos = np.asarray(state.positions)
        if last >= 0 and last not in set(pos.tolist()):
            raise StateError(
                f"set_kv must keep the cell at position n_past-1 = {last}: decoding continues after it"
            )
        if len(np.unique(pos)) != len(pos):
            raise StateError("set_kv: positions must be distinct")
        if pos.size and (pos.min() < 0 or pos.max() > last):
            raise StateError(f"set_kv: positions must lie in [0, {last}]")
        if len(pos) > self.n_ctx:
            raise StateError(f"set_kv: {len(pos)} cells do not fit in n_ctx={self.n_ctx}")
        for il in state.layers:
            li = self.layers[il]
            k, v, b = state.keys[il], state.values[il], state.bias[il]
            if k.shape != (len(pos), li["n_head_kv"], li["head_dim_k"]) or v.shape[:2] != k.shape[:2]:
                raise StateError(f"set_kv: layer {il} has keys {k.shape} / values {v.shape}")
            if b.shape != k.shape[:2]:
                raise StateError(f"set_kv: layer {il} bias has shape {b.shape}, expected {k.shape[:2]}")
            if not (np.isfinite(k).all() and np.isfinite(v).all()):
                raise StateError(f"set_kv: layer {il} keys or values are not finite")

    def _write_kv(self, state: KVState, old: bytes | None = None) -> None:
        """Write ``state`` unchecked, in this context's V layout (KVState holds V untransposed)."""
        blob = build_seq_state(dataclasses.replace(state, v_trans=not self.flash_attn), with_bias=self.bias_storage)
        self.write_state(blob, state.n_cells, old)
        if self.bias_storage and not self._maybe_biased:
            self._maybe_biased = state.holds_bias()

    def write_state(self, blob: bytes, n_cells: int, old: bytes | None = None) -> None:
        """Write a :meth:`snapshot` of this session that holds ``n_cells`` compactable cells; on
        failure restore ``old`` (a snapshot of the current state the caller holds; None: one taken
        here, a full copy of the cache) and raise StateError. :attr:`tokens` and :meth:`logits`
        are not the snapshot's: :meth:`scratch` restores all of them."""
        if old is None:
            old = self.snapshot()
        try:
            _native.state_set(self.ctx, blob)
        except NativeError as err:
            _native.state_set(self.ctx, old)
            raise StateError(f"the KV state was refused and the previous one restored: {err}") from err
        self._n_cells = n_cells

    # --- save / restore ---
    def save(self, path: str | os.PathLike) -> Path:
        """Write the session to ``path`` atomically (state with bias, bookkeeping, fingerprint)."""
        if self._last_logits is None:
            raise PyllamaamError("nothing to save: the session is empty")
        header = {
            "model": self.model.fingerprint(),
            # where the weights came from, for tools that load them again (`pyllamaam ask`): a
            # catalog name, else the GGUF file's path; the fingerprint still decides on restore
            "model_file": catalog.name_of(self.model.path) or str(Path(self.model.path).resolve()),
            "n_ctx": self.n_ctx,
            "flash_attn": self.flash_attn,
            "kv_type_k": self.kv_type_k,
            "kv_type_v": self.kv_type_v,
            "bias_storage": self.bias_storage,
            "n_cells": self._n_cells,
            "n_past": self.n_past,
            "tokens": self._tokens,
        }
        if self._recording:  # the surprisal recorded so far, and the mode: both come back on restore
            header["record_surprisal"] = True
            header["token_nll"] = [float(x) for x in self._nll]
        return statefile.write(path, header, self.snapshot(), self._last_logits)

    def restore(self, path: str | os.PathLike) -> None:
        """Replace this session's state with the one saved at ``path``; untouched on any error."""
        saved = statefile.read(path)
        statefile.check_model(saved, self.model.fingerprint(), path)
        if saved.header["flash_attn"] != self.flash_attn:
            raise StateError(
                f"{path}: saved with flash_attn={saved.header['flash_attn']!r}, this session has {self.flash_attn!r}"
            )
        self._restore(saved, path)

    def _restore(self, saved: statefile.Saved, path: str | os.PathLike) -> None:
        h = saved.header
        # refused, not converted: the cells were quantized once already, and a silent conversion
        # would make the restored session differ from the saved one
        k, v = statefile.kv_types(h)
        if (k, v) != (self.kv_type_k, self.kv_type_v):
            raise StateError(
                f"{path}: saved with K/V cache types {k}/{v}, this session has {self.kv_type_k}/{self.kv_type_v}; "
                "load it into a session of the same types (Model.load_session picks them from the file)"
            )
        if statefile.bias_storage(h) and not self.bias_storage:
            raise StateError(f"{path}: saved with bias storage, this session has none; load it into a session "
                             "with bias storage (Model.load_session picks it from the file)")
        if h["n_cells"] > self.n_ctx:
            raise StateError(f"the saved state has {h['n_cells']} cells, n_ctx is {self.n_ctx}")
        try:  # the surprisal recorded before the save (none: token_nll reads the text again)
            nll = np.asarray(h.get("token_nll", []), dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise StateError(f"{path}: its recorded surprisal is not a list of numbers") from err
        if nll.ndim != 1 or len(nll) > len(h["tokens"]):
            raise StateError(f"{path}: its recorded surprisal does not match its tokens")
        self.write_state(saved.blob, int(h["n_cells"]))
        self._maybe_biased = self._maybe_biased or (self.bias_storage and statefile.bias_storage(h))
        self._tokens = [int(t) for t in h["tokens"]]
        self._recording, self._nll = bool(h.get("record_surprisal", False)), nll
        self._last_logits = saved.logits
