"""F1 of label sets: each level's threshold tuned on dev, micro- and macro-F1 per level and over
all levels (what the hierarchical-classification literature reports for WOS, RCV1-v2 and NYT,
and what a user of a classifier gets: label sets, not rankings).

Definitions (scores are sigmoid probabilities; tested against scikit-learn's `f1_score` with
`zero_division=np.nan`):

- A label is predicted for a document iff its score >= its level's threshold t_n.
- F1 of a set of (document, label) cells: 2 TP / (2 TP + FP + FN).
- `f1_micro_L{n}`: over every cell of level n (documents x labels of level n).
- `f1_macro_L{n}`: the mean over level n's labels of each label's F1 (over its column). A label
  with no gold and no prediction in the split (0 / 0) has no F1 and is left out of the mean
  (scikit-learn's `zero_division=np.nan`: counting it as 0 would punish a model for the rare
  labels a small dev set lacks, counting it as 1 would reward predicting nothing).
- `f1_micro`: over every cell of every level, each level at its own threshold.
- `f1_macro`: the mean over every label of every level of its F1 (flat: what HTC papers call
  Macro-F1, scikit-learn's `average="macro"` on the levels' columns side by side), left-out
  labels as above. Not the mean of the levels' values (unlike `rp_macro`): the per-level values
  are there for that.
- An F1 with nothing to count (0 / 0: no gold and no prediction at all) is NaN.

Threshold search (`tune_threshold`): the t that maximizes level n's micro-F1 on dev, exact over
every possible threshold, ties to the highest t (the fewest labels). Lowering t past a non-gold
score only adds a false positive, so the best t is always a gold label's score: the candidates
are the distinct gold scores, and t is that score itself ("predicted iff score >= t": the
lowest-scored cell predicted on dev is a gold one). For a candidate c, TP = gold scores >= c
and PP (predicted) = scores >= c, so F1 = 2 TP / (PP + G) needs the scores in order, not the
cells. At EURLEX57K scale (5,000 dev documents x 4,000+ labels) sorting every score costs
seconds; only the top of them matters: F1(c) <= 2 G / (PP(c) + G), so once a candidate reaches
F1 = f, no threshold predicting more than G (2 / f - 1) cells can beat it. The search sorts the
top 8 G scores (`np.partition`, one pass), then, until the bound proves its best candidate
optimal, at least 4 times more: as many as that candidate's bound asks for; a top of more than
1/8 of the scores (a model still near the prior) sorts every score at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hiersearch.metrics.keys import f1_macro_key, f1_micro_key, f1_threshold_key

__all__ = [
    "f1_at_thresholds",
    "f1_of_label_sets",
    "f1_thresholds",
    "label_sets",
    "tune_threshold",
    "tune_thresholds",
    "tuned_f1",
]

# The first search sorts the top FIRST_TOP x G scores of a level (G: its gold cells), then 4x
# more each time the bound cannot prove the best candidate optimal (see the docstring).
FIRST_TOP = 8
GROWTH = 4
# A top slice of more than 1 / PARTIAL of a level's scores is not worth a partition first:
# every score is sorted instead (measured at EURLEX57K scale, BENCHMARKS.md section 9).
PARTIAL = 8


def _flat(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(y_score)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [docs, labels], got shape {scores.shape}")
    gold = np.asarray(y_true)
    if gold.shape != scores.shape:
        raise ValueError(f"gold shape {gold.shape} != scores shape {scores.shape}")
    if scores.size and np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores.ravel(), (gold != 0).ravel()


def _above_all(flat: np.ndarray) -> float:
    """A threshold no score reaches (a level without gold predicts nothing): just above 1 (or
    the highest score), in the scores' own precision, so that it stays above when compared
    there."""
    dtype = flat.dtype if flat.dtype.kind == "f" else np.dtype(np.float64)
    top = dtype.type(max(1.0, float(flat.max()) if flat.size else 1.0))
    return float(np.nextafter(top, dtype.type(np.inf)))


def _best_candidate(
    top: np.ndarray, gold_sorted: np.ndarray, complete: bool
) -> tuple[int, int, float] | None:
    """The best candidate among the gold scores that `top` (sorted, ascending) counts
    exactly: (TP, PP, threshold), ties to the highest threshold; None if there is none.

    `top` holds every score above its lowest value (np.partition); scores equal to it may lie
    outside, so unless `top` is every score (`complete`) only candidates above it count."""
    candidates = np.unique(gold_sorted)
    if not complete and top.size:
        candidates = candidates[candidates > top[0]]
    if not candidates.size:
        return None
    g = gold_sorted.size
    tp = g - np.searchsorted(gold_sorted, candidates, side="left")
    pp = top.size - np.searchsorted(top, candidates, side="left")
    f1 = 2.0 * tp / (pp + g)  # equal fractions give equal doubles (division is exact-rounded)
    best = candidates.size - 1 - int(np.argmax(f1[::-1]))  # the highest of the best
    return int(tp[best]), int(pp[best]), float(candidates[best])


def tune_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The threshold t maximizing the micro-F1 of "score >= t" over all cells of one level
    (module docstring: exact, ties to the highest t). A level without gold cells gets a
    threshold above every score (it predicts nothing). ValueError on NaN scores."""
    flat, truth = _flat(y_true, y_score)
    gold_sorted = np.sort(flat[truth])
    g, n = gold_sorted.size, flat.size
    if g == 0:
        return _above_all(flat)
    k = min(n, FIRST_TOP * g)
    while True:
        # a top of over 1/PARTIAL of the scores costs about a full sort after the partition
        complete = k * PARTIAL >= n
        top = np.sort(flat) if complete else np.sort(np.partition(flat, n - k)[n - k :])
        found = _best_candidate(top, gold_sorted, complete)
        # a threshold outside `top` predicts >= k cells: F1 <= 2 G / (k + G); integers, exact
        if found is not None and (complete or found[0] * (k + g) >= g * (found[1] + g)):
            return found[2]
        # the top that would prove this candidate optimal: G (PP + G) / TP - G cells
        needed = n if found is None or found[0] == 0 else -(-g * (found[1] + g) // found[0]) - g
        k = min(n, max(k * GROWTH, needed))


def tune_thresholds(y_true: Sequence[np.ndarray], y_score: Sequence[np.ndarray]) -> list[float]:
    """Each level's `tune_threshold`: one [docs, labels of level n] array per level."""
    return [tune_threshold(g, s) for g, s in zip(y_true, y_score, strict=True)]


def label_sets(y_score: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[np.ndarray]:
    """Per level, the predicted cells: score >= the level's threshold (bool)."""
    if len(y_score) != len(thresholds):
        raise ValueError(f"{len(thresholds)} thresholds for {len(y_score)} levels")
    return [np.asarray(s) >= t for s, t in zip(y_score, thresholds, strict=True)]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (nothing to count)."""
    out = np.full(np.shape(denominator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN; NaN if none is (no warning)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def f1_of_label_sets(
    y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray], split: str
) -> dict[str, float]:
    """Micro- and macro-F1 per level and over all levels of predicted label sets (one
    [docs, labels of level n] array per level, nonzero = predicted): the module's
    definitions."""
    if len(y_true) != len(y_pred) or not y_pred:
        raise ValueError(f"{len(y_true)} gold arrays for {len(y_pred)} prediction arrays")
    out: dict[str, float] = {}
    per_label, totals = [], np.zeros(3, dtype=np.int64)
    for level, (gold, pred) in enumerate(zip(y_true, y_pred, strict=True), start=1):
        gold, pred = np.asarray(gold) != 0, np.asarray(pred) != 0
        if gold.shape != pred.shape or gold.ndim != 2:
            raise ValueError(f"level {level}: gold {gold.shape} and predictions {pred.shape}")
        tp = np.count_nonzero(gold & pred, axis=0)
        fp = np.count_nonzero(pred, axis=0) - tp
        fn = np.count_nonzero(gold, axis=0) - tp
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        counts = np.array([tp.sum(), fp.sum(), fn.sum()], dtype=np.int64)
        totals += counts
        out[f1_micro_key(split, level)] = float(
            _ratio(2 * counts[0], 2 * counts[0] + counts[1] + counts[2])
        )
        out[f1_macro_key(split, level)] = _mean(f1)
        per_label.append(f1)
    out[f1_micro_key(split)] = float(_ratio(2 * totals[0], 2 * totals[0] + totals[1] + totals[2]))
    out[f1_macro_key(split)] = _mean(np.concatenate(per_label))
    return out


def f1_at_thresholds(
    y_true: Sequence[np.ndarray],
    y_score: Sequence[np.ndarray],
    thresholds: Sequence[float],
    split: str,
) -> dict[str, float]:
    """`f1_of_label_sets` of the cells scoring >= each level's threshold (test: dev's)."""
    return f1_of_label_sets(y_true, label_sets(y_score, thresholds), split)


def tuned_f1(
    y_true: Sequence[np.ndarray], y_score: Sequence[np.ndarray], split: str
) -> dict[str, float]:
    """Each level's threshold tuned on this split (dev) and the F1 it gives, with the
    thresholds themselves (`f1_threshold_key`): what a trial reports on dev every epoch."""
    thresholds = tune_thresholds(y_true, y_score)
    out = f1_at_thresholds(y_true, y_score, thresholds, split)
    for level, threshold in enumerate(thresholds, start=1):
        out[f1_threshold_key(split, level)] = threshold
    return out


def f1_thresholds(metrics: Mapping[str, Any], levels: int, split: str = "dev") -> list | None:
    """The levels' thresholds a report carries (`tuned_f1`), or None if any is missing or not
    a finite number (a report of a version without F1, or a diverged epoch)."""
    values = [metrics.get(f1_threshold_key(split, n)) for n in range(1, levels + 1)]
    ok = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values
    )
    return [float(v) for v in values] if ok else None
