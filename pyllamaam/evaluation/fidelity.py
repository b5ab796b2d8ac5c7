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


def fidelity(full: np.ndarray, compacted: np.ndarray, targets: Sequence[int]) -> dict[str, float]:
    """KL(full || compacted) and NLL of the true continuation under both.

    Parameters
    ----------
    full, compacted : ndarray, [n, V]
        Logits over the same continuation from the full and the compacted cache.
    targets : the n true next tokens.

    Returns
    -------
    dict with ``kl``, ``kl_se``, ``kl_max``, ``nll_full``, ``nll``, ``delta_nll``,
    ``delta_nll_se`` (nats per token; the standard errors are over tokens).
    """
    kl = kl_rows(full, compacted)
    a, b = nll_rows(full, targets), nll_rows(compacted, targets)
    k, kse = mean_se(kl)
    d, dse = mean_se(b - a)
    return {
        "kl": k,
        "kl_se": kse,
        "kl_max": float(kl.max()),
        "nll_full": float(a.mean()),
        "nll": float(b.mean()),
        "delta_nll": d,
        "delta_nll_se": dse,
    }


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
