"""Attention Matching core: pure numpy/scipy, nothing native.

Axis order (fixed for the whole package), per layer::

    K, V         [kv_head, token, head_dim]      = [H, T, d]   (V may have its own dv)
    Q            [kv_head, query, head_dim]      = [H, n, d]   (row block h = the queries
                                                  of every query head in KV head h's group)
    prior_bias   [kv_head, token]                = [H, T]
    result       indices [H, t], beta [H, t], values [H, t, dv]

Logits are post-scale, ``scale * q . k + beta``: beta is added where llama.cpp adds its
mask. Precision: inputs are converted to float32; scores, Phi and the Gram products run
in float32 (float64 accumulators for sums, float64 where a tolerance below float32's
resolution is asked for), the linear solves in float64. Per (layer, KV head) the kernel
runs select -> beta (NNLS on the mass) -> values
(ridge least squares on the output), see DESIGN.md section 4.
"""

from ._attention import AttentionStats, attend, attention_stats
from .beta import fit_weights, phi_matrix
from .budgets import (
    BudgetPlan,
    allocate_budgets,
    load_head_budgets,
    proportions_array,
    save_head_budgets,
    uniform_proportions,
)
from .head import compact_head, compact_layer
from .metrics import AttentionErrors, attention_errors
from .options import FitOptions
from .result import PAD, CompactedHead, CompactedLayer
from .select import Selector, available_methods, register
from .task import keep_mask_mad, keep_mask_topk, task_position_scores
from .values import fit_values, round_beta

__all__ = [
    "PAD",
    "AttentionErrors",
    "AttentionStats",
    "BudgetPlan",
    "CompactedHead",
    "CompactedLayer",
    "FitOptions",
    "Selector",
    "allocate_budgets",
    "attend",
    "attention_errors",
    "attention_stats",
    "available_methods",
    "compact_head",
    "compact_layer",
    "fit_values",
    "fit_weights",
    "keep_mask_mad",
    "keep_mask_topk",
    "load_head_budgets",
    "phi_matrix",
    "proportions_array",
    "register",
    "round_beta",
    "save_head_budgets",
    "task_position_scores",
    "uniform_proportions",
]
