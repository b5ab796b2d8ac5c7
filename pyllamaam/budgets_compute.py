"""``pyllamaam budgets compute``: per-head sensitivity curves and nonuniform head budgets.

For one offline text the model reads, each (layer, KV head) is compacted alone at several
ratios (every other head keeps all its cells) and the change in NLL of the true continuation
is recorded: one curve per head. A greedy exchange then moves keys from the heads that lose
least to the heads that gain most, at a target ratio, and the resulting budgets are saved as
proportions ``{"L{layer}H{kvhead}": p}`` (:func:`pyllamaam.compact.save_head_budgets`).

In llama.cpp every cell holds K and V of all heads, so the cells a compacted span occupies are
the *largest* head budget: budgets that exceed the uniform ``t`` cost memory. The solver takes a
cap (in multiples of ``t``); the saved file records it with the curves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import kvsplit, pipeline
from .compact import compact_layer, save_head_budgets, spanfit
from .errors import ConfigError
from .queries import rows


def _text(model: Any, n_tokens: int, cont: int) -> tuple[list[int], list[int]]:
    import pydoc_data.topics

    t = pydoc_data.topics.topics
    text = "\n\n".join(t[k] for k in sorted(t))
    toks = model.tokenize(text, add_bos=model.info["add_bos"])[: n_tokens + cont]
    if len(toks) < n_tokens + cont:
        raise ConfigError(f"the offline text has only {len(toks)} tokens; ask for fewer")
    return toks[:n_tokens], toks[n_tokens:]


def head_sensitivity(
    model: Any,
    n_tokens: int = 1024,
    ratios: tuple[float, ...] = (5.0, 10.0, 20.0),
    cont: int = 64,
    keep_first: int = 4,
    keep_last: int = 32,
    progress: bool = True,
    n_threads: int | None = None,
    flash_attn: bool = False,
) -> dict[str, Any]:
    """ΔNLL of the continuation when one head at a time is compacted, ``[L, H, len(ratios)]``."""
    from tqdm import tqdm

    ctx, tail = _text(model, n_tokens, cont)
    with model.session(n_ctx=2 * n_tokens + 256, n_threads=n_threads, flash_attn=flash_attn) as s:
        s.prefill(ctx)
        nll0 = s.score(tail)
        blob, n_cells = s.snapshot(), s.n_cells
        ref = s.reference_queries("repeat", keep_first, keep_last)
        kv = s.get_kv()
        split = kvsplit.split_cells(kv, keep_first, keep_last)
        T = len(split.span)
        fit_q, _ = rows.split_queries(ref.queries, 0.2, 2048, s, 1024)
        layers = s.compact_layers()
        H = kv.keys[layers[0]].shape[1]
        curves = np.zeros((len(layers), H, len(ratios)))
        bar = tqdm(total=len(layers) * H * len(ratios), disable=not progress, unit="head", desc="sensitivity")
        clock = time.perf_counter()
        for i, il in enumerate(layers):
            K, V = kvsplit.span_arrays(kv, il, split)
            prior = kvsplit.span_prior(kv, il, split)
            for j, r in enumerate(ratios):
                res = compact_layer(K, V, fit_q[il], max(1, round(T / r)), s.kq_scale(il), prior_bias=prior)
                for h in range(H):
                    s.set_kv(_one_head(kv, split, il, h, res, K))
                    curves[i, h, j] = s.score(tail) - nll0
                    s.write_state(blob, n_cells)
                    bar.update(1)
        bar.close()
    return {
        "layers": layers,
        "n_head_kv": H,
        "span": T,
        "ratios": list(ratios),
        "dnll": curves.tolist(),
        "full_nll": nll0,
        "n_tokens": n_tokens,
        "seconds": time.perf_counter() - clock,
    }


#: Fitted keys of a head at which the window-fill curves are measured, in multiples of the uniform
#: fitted count at the target ratio (capped at the compacted cells t: no window left).
FILL_LEVELS = (0.25, 0.5, 1.0, 1.5, 2.0)


def fill_sensitivity(
    model: Any,
    n_tokens: int = 1024,
    target: float = 10.0,
    levels: tuple[float, ...] = FILL_LEVELS,
    cont: int = 64,
    keep_first: int = 4,
    keep_last: int = 32,
    progress: bool = True,
    n_threads: int | None = None,
    flash_attn: bool = False,
) -> dict[str, Any]:
    """How much the continuation changes when one head at a time is compacted the way
    ``budget_cells="fill"`` compacts it at ``target``: ``b`` fitted keys of its older span and an
    exact window of its last ``t - b`` span cells, for ``b`` at ``levels`` times the uniform fitted
    count. Two curves ``[L, H, levels]``: ``dkl``, the mean KL(full || compacted) of the next-token
    distributions (what the solver uses), and ``dnll``, the change in NLL of the true tokens.

    One head's change is small (about 0.002 nats of NLL on SmolLM2 at 10x), and the NLL of 128
    true tokens moves by as much from noise: 3% of the ΔNLL curves were monotone in the keys.
    The KL compares whole distributions and is never negative, so it ranks heads more stably."""
    from tqdm import tqdm

    ctx, tail = _text(model, n_tokens, cont)
    with model.session(n_ctx=2 * n_tokens + 256, n_threads=n_threads, flash_attn=flash_attn) as s:
        s.prefill(ctx)
        full = s.eval_logits(tail)
        nll0 = _nll(full, tail)
        blob, n_cells = s.snapshot(), s.n_cells
        ref = s.reference_queries("repeat", keep_first, keep_last)
        kv = s.get_kv()
        split = kvsplit.split_cells(kv, keep_first, keep_last)
        T = len(split.span)
        t = kvsplit.span_target(T, target, None, keep_first, keep_last)
        t_fit = t - kvsplit.recent_extra(t, keep_last, pipeline.PIPELINE_DEFAULTS["recent"])
        keys = sorted({int(min(t, max(1, round(f * t_fit)))) for f in levels})
        fit_q, _ = rows.split_queries(ref.queries, 0.2, 2048, s, 1024)
        layers = s.compact_layers()
        H = kv.keys[layers[0]].shape[1]
        curves = np.zeros((len(layers), H, len(keys)))
        kls = np.zeros_like(curves)
        bar = tqdm(total=len(layers) * H * len(keys), disable=not progress, unit="head", desc="sensitivity")
        clock = time.perf_counter()
        for i, il in enumerate(layers):
            K, V = kvsplit.span_arrays(kv, il, split)
            prior = kvsplit.span_prior(kv, il, split)
            for j, b in enumerate(keys):
                res = spanfit.fit_layer_windows(
                    K, V, fit_q[il], b, t - b, s.kq_scale(il), prior, None, method=pipeline.AM_SELECTOR
                )
                for h in range(H):
                    s.set_kv(_one_head(kv, split, il, h, res, K))
                    lg = s.eval_logits(tail)
                    curves[i, h, j] = _nll(lg, tail) - nll0
                    kls[i, h, j] = pipeline.mean_kl(full, lg)
                    s.write_state(blob, n_cells)
                    bar.update(1)
        bar.close()
    return {
        "mode": "fill",
        "metric": "dkl",
        "dkl": kls.tolist(),
        "layers": layers,
        "n_head_kv": H,
        "span": T,
        "t": t,
        "t_fit": t_fit,
        "keys": keys,
        "dnll": curves.tolist(),
        "full_nll": nll0,
        "n_tokens": n_tokens,
        "seconds": time.perf_counter() - clock,
    }


def _nll(logits: np.ndarray, toks: list[int]) -> float:
    """Mean NLL of ``toks[1:]`` from the logits after each of ``toks[:-1]``."""
    lg = logits[:-1].astype(np.float64)
    m = lg.max(axis=1)
    lse = m + np.log(np.exp(lg - m[:, None]).sum(axis=1))
    return float(np.mean(lse - lg[np.arange(len(lg)), toks[1:]]))


def fill_solve(curves: np.ndarray, keys: list[int], t_fit: int) -> np.ndarray:
    """Per-head fitted keys summing to the uniform ``t_fit`` per head, within the measured range.

    Each head's ΔNLL is interpolated linearly in log(keys) between the measured points; keys
    move in steps from the head that loses least to the head that gains most while that lowers
    the predicted total (a greedy exchange, as :func:`exchange_solve`)."""
    c = np.asarray(curves, dtype=np.float64).reshape(-1, len(keys))
    levels = np.log(np.asarray(keys, dtype=np.float64))
    lo, hi = float(min(keys)), float(max(keys))
    if not lo <= t_fit <= hi:
        raise ConfigError(f"the uniform {t_fit} fitted keys lie outside the measured range [{lo:g}, {hi:g}]")

    def f(h: int, b: float) -> float:
        return float(np.interp(np.log(b), levels, c[h]))

    b = np.full(len(c), float(t_fit))
    step = max(1.0, round(0.05 * t_fit))
    return _exchange(f, b, step, lo, hi, 40 * len(c)).reshape(np.asarray(curves).shape[:2])


def _exchange(f, b: np.ndarray, step: float, lo: float, hi: float, rounds: int) -> np.ndarray:
    """Greedy exchange: move ``step`` keys from one head to another while that lowers the
    predicted total ``sum_h f(h, b[h])``, each time the pair (giver != taker) that lowers it most.
    The total falls at every move, so the loop ends (at most ``rounds`` moves)."""
    b = b.copy()
    idx = range(len(b))
    for _ in range(rounds):
        gain = np.array([f(h, b[h]) - f(h, b[h] + step) if b[h] + step <= hi else -np.inf for h in idx])
        loss = np.array([f(h, b[h] - step) - f(h, b[h]) if b[h] - step >= lo else np.inf for h in idx])
        if len(b) < 2:
            break
        up = int(np.argmax(gain))
        down = int(np.argmin(np.where(np.arange(len(b)) == up, np.inf, loss)))
        down2 = int(np.argmin(loss))  # a head that gains on both sides: the best taker besides it
        up2 = int(np.argmax(np.where(np.arange(len(b)) == down2, -np.inf, gain)))
        if gain[up2] - loss[down2] > gain[up] - loss[down]:
            up, down = up2, down2
        if up == down or not gain[up] > loss[down] + 1e-9:
            break
        b[up] += step
        b[down] -= step
    return b


def _one_head(kv, split, il: int, h: int, res, K: np.ndarray):
    """The full state with only (il, h) compacted: its first t span cells hold the fit, the rest -inf."""
    out = kv.subset(np.arange(len(kv.positions)))
    t = res.indices.shape[1]
    slots, rest = split.span[:t], split.span[t:]
    out.keys[il][slots, h] = res.keys(K)[h]
    out.values[il][slots, h] = res.values[h]
    out.bias[il][slots, h] = res.beta[h]
    out.bias[il][rest, h] = -np.inf
    return out


def exchange_solve(curves: np.ndarray, ratios: list[float], span: int, target: float, cap: float = 2.0) -> np.ndarray:
    """Per-head budgets (keys) summing to the uniform total at ``target``, each at most ``cap * t``.

    Each head's ΔNLL is interpolated linearly in log(budget) between the measured ratios
    (ΔNLL = 0 with every key kept); keys move in steps from the head that loses least by giving
    them to the head that gains most, while that lowers the predicted total.
    """
    c = np.asarray(curves, dtype=np.float64).reshape(-1, len(ratios))
    t = span / target
    levels = np.log(np.concatenate([[span], span / np.asarray(ratios, dtype=np.float64)]))
    vals = np.concatenate([np.zeros((len(c), 1)), c], axis=1)
    order = np.argsort(levels)
    levels, vals = levels[order], vals[:, order]

    def f(h: int, b: float) -> float:
        return float(np.interp(np.log(max(b, 1.0)), levels, vals[h]))

    b = np.full(len(c), t)
    step = max(1.0, round(0.05 * t))
    hi, lo = min(span, cap * t), max(1.0, t / 4)
    return _exchange(f, b, step, lo, hi, 20 * len(c)).reshape(np.asarray(curves).shape[:2])


def compute_budgets(
    model_name: str | None,
    out: Path,
    target: float = 10.0,
    cap: float = 2.0,
    progress: bool = True,
    mode: str = "fill",
    n_gpu_layers: int = 0,
    **kw: Any,
) -> dict[str, Any]:
    """Measure the curves, solve, write ``out`` (proportions) and ``out`` + ``.curves.json``.

    ``mode="fill"``: budgets for ``budget_cells="fill"`` (a head's fitted keys against its exact
    recent window, at equal cells); ``"keys"``: single-head curves over ratios for budgets that
    move keys, and cells, between heads (``budget_cells="ratio"`` or ``"keys"``). ``n_gpu_layers``:
    layers offloaded to a GPU; ``kw``: options of the sensitivity function (``flash_attn``, ...)."""
    import pyllamaam

    if mode not in ("fill", "keys"):
        raise ConfigError(f"mode must be 'fill' or 'keys', not {mode!r}")
    with pyllamaam.load_model(model_name, n_gpu_layers=n_gpu_layers) as model:
        if mode == "fill":
            kw.pop("ratios", None)
            sens = fill_sensitivity(model, target=target, progress=progress, **kw)
        else:
            sens = head_sensitivity(model, progress=progress, **kw)
        n_layer = model.n_layer
    if mode == "fill":
        b = fill_solve(np.asarray(sens[sens["metric"]]), sens["keys"], sens["t_fit"])
    else:
        b = exchange_solve(np.asarray(sens["dnll"]), sens["ratios"], sens["span"], target, cap)
    props = np.zeros((n_layer, sens["n_head_kv"]))
    for i, il in enumerate(sens["layers"]):
        props[il] = b[i]
    # layers that are not compacted (sliding-window layers) keep proportion 0: the format is complete
    out.parent.mkdir(parents=True, exist_ok=True)
    save_head_budgets(out, props / props.sum())
    flat = np.asarray(sens[sens.get("metric", "dnll")]).reshape(len(b.ravel()), -1)
    if mode == "fill":
        lk = np.log(sens["keys"])
        predicted = float(sum(np.interp(np.log(sens["t_fit"]), lk, row) for row in flat))
        solved = float(sum(np.interp(np.log(x), lk, row) for x, row in zip(b.ravel(), flat, strict=True)))
    else:
        c = int(np.argmin(np.abs(np.asarray(sens["ratios"]) - target)))
        predicted = float(flat[:, c].sum()) if sens["ratios"][c] == target else None
        solved = None
    info = {
        **sens,
        "target": target,
        "cap": cap,
        "budgets": b.tolist(),
        # the solver's objective (the summed single-head curves) at uniform and at the budgets
        "predicted_uniform": predicted,
        "predicted_budgets": solved,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(str(out) + ".curves.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
