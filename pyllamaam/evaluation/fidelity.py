"""Model fidelity: KL(full || compacted) over a continuation and the NLL of its true tokens.

Every function here works on logits already computed (float32 ``[n, n_vocab]``); the two
session helpers compute them with :meth:`Session.eval_logits`, which leaves the session
unchanged. Row ``i`` of the logits of ``eval_logits(toks)`` predicts ``toks[i + 1]``: the
cached last logits of a session are not used, since they predate any compaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..engine import Session


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64, [n, V] -> [n, V]."""
    x = np.asarray(logits, dtype=np.float64)
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def kl_rows(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row, nats, [n]."""
    if p_logits.shape != q_logits.shape:
        raise ConfigError(f"logit shapes differ: {p_logits.shape} vs {q_logits.shape}")
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=1), 0.0)


def nll_rows(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of ``targets[i]`` under row ``i``, nats, [n]."""
    t = np.asarray(targets, dtype=np.int64)
    if len(t) != len(logits):
        raise ConfigError(f"{len(logits)} logit rows for {len(t)} targets")
    return -log_softmax(logits)[np.arange(len(t)), t]


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se


def continuation_logits(session: Session, toks: Sequence[int]) -> np.ndarray:
    """Logits predicting ``toks[1:]`` given the session and ``toks[:i+1]``, [len(toks) - 1, V]."""
    if len(toks) < 2:
        raise ConfigError("a continuation needs at least 2 tokens")
    return session.eval_logits(list(toks))[:-1]


def copied_targets(context: Sequence[int], continuation: Sequence[int], n: int = 3) -> np.ndarray:
    """Which continuation tokens a verbatim copy of the context predicts, [len(continuation) - 1].

    Target ``i`` is ``continuation[i + 1]``. It counts as copied when the ``n`` tokens ending at
    it (read across the seam: the context's last tokens come before the continuation) occur
    somewhere in ``context``: an induction head that matched the ``n - 1`` tokens before it finds
    the target as the next token there. Such tokens need the exact key and value of an old cell,
    look, so a compaction's ΔNLL on them and on the other ("fresh") tokens is best read apart.
    ``n=3`` (two tokens matched, then the copy): ``n=2`` also counts the commonest word pairs,
    and with ``n=4`` a copied run misses its first tokens where the tokenizer splits it
    differently in the context (Gemma-3's ASCII-table borders).
    """
    if n < 2:
        raise ConfigError(f"a copy needs n >= 2 tokens to match, not {n}")
    ctx = [int(t) for t in context]
    seen = {tuple(ctx[j : j + n]) for j in range(len(ctx) - n + 1)}
    seq = ctx[-(n - 1) :] + [int(t) for t in continuation]
    off = len(seq) - len(continuation)  # where continuation[0] sits in seq
    out = np.zeros(max(len(continuation) - 1, 0), dtype=bool)
    for i in range(len(out)):
        end = off + i + 1  # continuation[i + 1]
        out[i] = end - n + 1 >= 0 and tuple(seq[end - n + 1 : end + 1]) in seen
    return out


def fidelity(
    full: np.ndarray, compacted: np.ndarray, targets: Sequence[int], copied: np.ndarray | None = None
) -> dict[str, float]:
    """KL(full || compacted) and NLL of the true continuation under both.

    Parameters
    ----------
    full, compacted : ndarray, [n, V]
        Logits over the same continuation from the full and the compacted cache.
    targets : the n true next tokens.

    copied : optional bool mask, [n]: the targets a copy of the context predicts
        (:func:`copied_targets`).

    Returns
    -------
    dict with ``kl``, ``kl_se``, ``kl_max``, ``nll_full``, ``nll``, ``delta_nll``,
    ``delta_nll_se`` (nats per token; the standard errors are over tokens). With ``copied``, also
    ``n_copied`` and the mean ΔNLL and KL over the copied targets and over the rest
    (``delta_nll_copied``, ``delta_nll_fresh``, ``kl_copied``, ``kl_fresh``; None where a side is
    empty), and every target's ΔNLL (``delta_nll_tokens``, 5 decimals) and copy flag
    (``copied``), so that other splits can be read later without running the cell again.
    """
    kl = kl_rows(full, compacted)
    a, b = nll_rows(full, targets), nll_rows(compacted, targets)
    k, kse = mean_se(kl)
    d, dse = mean_se(b - a)
    out = {
        "kl": k,
        "kl_se": kse,
        "kl_max": float(kl.max()),
        "nll_full": float(a.mean()),
        "nll": float(b.mean()),
        "delta_nll": d,
        "delta_nll_se": dse,
    }
    if copied is not None:
        c = np.asarray(copied, dtype=bool)
        if c.shape != kl.shape:
            raise ConfigError(f"copied mask of shape {c.shape} for {len(kl)} targets")
        out["n_copied"] = int(c.sum())
        out["copied"] = c.astype(int).tolist()
        out["delta_nll_tokens"] = [round(float(x), 5) for x in b - a]
        for name, m in (("copied", c), ("fresh", ~c)):
            out[f"delta_nll_{name}"] = float((b - a)[m].mean()) if m.any() else None
            out[f"kl_{name}"] = float(kl[m].mean()) if m.any() else None
    return out


def answer_check(session: Session, prompt: Sequence[int], answer: Sequence[int]) -> dict[str, object]:
    """Greedy exact match of ``answer`` after ``prompt``, in one teacher-forced pass.

    Greedy decoding emits the answer exactly when, at each step, the argmax is the next answer
    token; ``prediction`` is the greedy output up to and including the first miss;
    ``token_accuracy`` the fraction of answer tokens that are the argmax under teacher forcing;
    ``answer_nll`` the mean NLL of the answer tokens (soft measures for a model too small to
    answer exactly).
    """
    if not prompt or not answer:
        raise ConfigError("answer_check needs a prompt and an answer")
    logits = session.eval_logits(list(prompt) + list(answer)[:-1])[len(prompt) - 1 :]
    best = logits.argmax(axis=1)
    hits = best == np.asarray(answer)
    n_ok = int(np.argmin(hits)) if not hits.all() else len(answer)
    pred = list(answer[:n_ok]) + ([int(best[n_ok])] if n_ok < len(answer) else [])
    return {
        "correct": bool(hits.all()),
        "prediction": session.model.detokenize(pred),
        "token_accuracy": float(hits.mean()),
        "answer_nll": float(nll_rows(logits, answer).mean()),
    }
