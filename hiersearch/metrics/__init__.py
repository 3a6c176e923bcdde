"""Metrics: R-Precision (per level, micro, macro), RP@k and nDCG@k, their compiled kernel, and
the one place metric keys are named."""

from __future__ import annotations

from hiersearch.metrics.ranking import (
    DEFAULT_METRIC,
    DEFAULT_MODE,
    evaluate,
    is_metric_key,
    loss_key,
    mode_of,
    ndcg_at_k,
    r_precision,
    r_precision_per_doc,
    r_precision_reference,
    rp_at_k,
    rp_level_key,
    rp_macro_key,
    rp_micro_key,
)

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_MODE",
    "evaluate",
    "is_metric_key",
    "loss_key",
    "mode_of",
    "ndcg_at_k",
    "r_precision",
    "r_precision_per_doc",
    "r_precision_reference",
    "rp_at_k",
    "rp_level_key",
    "rp_macro_key",
    "rp_micro_key",
]
