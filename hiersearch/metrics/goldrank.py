"""Ranking metrics from where each gold label ranks: the one compiled (numba) pass over the
scores behind `ranking.py`.

Every metric of a document with R gold labels depends only on where its gold labels rank: a
gold label scoring t has `above` labels scoring > t and `tie` labels (itself included) scoring
== t, so under a uniformly random order among equal scores it is in the top q with chance
clip((q - above) / tie, 0, 1). Summed over the gold labels, that is the expected gold count of
the top q, from which R-Precision (q = R), RP@k and nDCG@k follow. Counting `above` and `tie`
compares every score of the row with the gold score: branch-free and vectorized, with the row
in cache while it is compared with each of the document's few gold scores. No row is sorted.

Only ranks up to the deepest one asked about (depth = max(R, k)) matter, so a count stops
once it reaches the depth (checked every `_BLOCK` values): a gold label that the model ranks
low costs a fraction of a pass. Micro (all levels together) adds up the counts of every
level; a level's own count and the micro count share the pass over the gold label's level.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

_BLOCK = 512  # values compared before a count checks whether it has reached its depth
_GOLD_BLOCK = 64  # gold flags or-ed together before any of them is looked at alone


def _rank_metrics(
    scores: tuple, golds: tuple, ks: np.ndarray, micro: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Per target (each level, then all levels if `micro`): R-Precision per row (NaN where
    R = 0), documents counted and skipped, and the sums over counted rows of RP@k and nDCG@k
    for each k in `ks` (ascending). Also whether any score is NaN (then nothing is valid)."""
    levels = len(scores)
    rows = scores[0].shape[0]
    targets = levels + 1 if micro else levels
    kmax = ks[-1] if ks.size else 0
    per_doc = np.full((rows, targets), np.nan)
    docs = np.zeros(targets, dtype=np.int64)
    skipped = np.zeros(targets, dtype=np.int64)
    rp_at = np.zeros((targets, ks.size))
    ndcg_at = np.zeros((targets, ks.size))
    discount = 1.0 / np.log2(np.arange(2, kmax + 2).astype(np.float64))
    ideal = np.cumsum(discount)
    total = 0
    for lv in range(levels):
        total += scores[lv].shape[1]
    value = np.empty(total, dtype=scores[0].dtype)  # this row's gold scores ...
    owner = np.empty(total, dtype=np.int64)  # ... and their levels
    above = np.empty((total, 2), dtype=np.int64)  # [own level, all levels]
    tie = np.empty((total, 2), dtype=np.int64)
    r = np.zeros(targets, dtype=np.int64)
    found = np.zeros(kmax + 1)  # expected gold count of the top q, q = 0..kmax
    for i in range(rows):
        n = 0
        bad = 0
        for lv in range(levels):
            row, truth = scores[lv][i], golds[lv][i]
            cols = row.shape[0]
            c = 0
            while c < cols:
                # slices start at 0: numba vectorizes such loops, not range(c, end)
                flags_part, values_part = truth[c : c + _GOLD_BLOCK], row[c : c + _GOLD_BLOCK]
                flags = np.uint8(0)
                for j in range(flags_part.shape[0]):
                    flags |= flags_part[j]
                    bad += values_part[j] != values_part[j]
                if flags != 0:
                    for j in range(flags_part.shape[0]):
                        if flags_part[j] != 0:
                            value[n] = values_part[j]
                            owner[n] = lv
                            n += 1
                c += _GOLD_BLOCK
        if bad:
            return per_doc, docs, skipped, rp_at, ndcg_at, True
        r[:] = 0
        for p in range(n):
            r[owner[p]] += 1
        if micro:
            r[levels] = n
        depth_all = max(n, kmax)
        for p in range(n):
            t, own = value[p], owner[p]
            depth = max(r[own], kmax)
            all_above, all_tie = 0, 0
            for lv in range(levels):
                if lv == own:
                    limit = max(depth, depth_all - all_above) if micro else depth
                elif micro and all_above < depth_all:
                    limit = depth_all - all_above
                else:
                    continue
                # labels scoring > t and == t, until the first count reaches `limit`
                row = scores[lv][i]
                cols = row.shape[0]
                a, e, c = 0, 0, 0
                while c < cols:
                    # a slice starts at 0: numba vectorizes such a loop, not range(c, end)
                    part = row[c : c + _BLOCK]
                    for j in range(part.shape[0]):
                        x = part[j]
                        a += x > t
                        e += x == t
                    if a >= limit:
                        break
                    c += _BLOCK
                if lv == own:
                    above[p, 0] = a
                    tie[p, 0] = max(e, 1)
                all_above += a
                all_tie += e
            above[p, 1] = all_above
            tie[p, 1] = max(all_tie, 1)
        for target in range(targets):
            rt = r[target]
            if rt == 0:
                skipped[target] += 1
                continue
            docs[target] += 1
            whole = 1 if target == levels else 0  # micro reads the all-level counts
            found[:] = 0.0
            at_r = 0.0
            for p in range(n):
                if whole == 0 and owner[p] != target:
                    continue
                a, e = above[p, whole], tie[p, whole]
                # a stopped count has a >= depth >= every q asked: it adds nothing
                at_r += min(max((rt - a) / e, 0.0), 1.0)
                for q in range(1, kmax + 1):
                    found[q] += min(max((q - a) / e, 0.0), 1.0)
            per_doc[i, target] = at_r / rt
            dcg = 0.0
            q = 0
            for index in range(ks.size):
                k = ks[index]
                while q < k:
                    dcg += (found[q + 1] - found[q]) * discount[q]
                    q += 1
                best = min(k, rt)
                rp_at[target, index] += found[k] / best
                ndcg_at[target, index] += dcg / ideal[best - 1]
    return per_doc, docs, skipped, rp_at, ndcg_at, False


class RankSums(NamedTuple):
    """One chunk's metrics per target: each level, then micro (if asked)."""

    per_doc: np.ndarray  # rows x targets: R-Precision, NaN where R = 0
    docs: np.ndarray  # targets: rows with R > 0
    skipped: np.ndarray  # targets: rows with R = 0
    rp_at: np.ndarray  # targets x ks: sums of RP@k over counted rows
    ndcg_at: np.ndarray  # targets x ks: sums of nDCG@k over counted rows


_compiled: dict[str, Any] = {}


def _numba() -> Any:
    """numba, imported on the first metric computed: the metric key names (and every command
    that only reads them) work without it, and start faster."""
    try:
        import numba
    except ImportError as err:
        raise ImportError(
            "hiersearch's ranking metrics need numba (a dependency of hiersearch, "
            f"numba>=0.60), which could not be imported: {err}. "
            "Install it with `pip install 'numba>=0.60'` (or reinstall hiersearch)."
        ) from err
    return numba


def _kernel() -> Any:
    """The compiled kernel, built on first use (cached on disk by numba across processes)."""
    if "rank_metrics" not in _compiled:
        # nogil: ranking.py runs row chunks on a thread pool
        _compiled["rank_metrics"] = _numba().njit(nogil=True, cache=True)(_rank_metrics)
    return _compiled["rank_metrics"]


def rank_metrics(
    scores: list[np.ndarray],
    golds: list[np.ndarray],
    ks: list[int],
    micro: bool,
    compiled: bool = True,
) -> RankSums:
    """R-Precision, RP@k and nDCG@k of every level and (if `micro`) of all levels together.

    `scores`: one [rows, labels of the level] float array per level (one dtype for all);
    `golds`: multi-hot arrays of the same shapes (nonzero = gold); `ks`: positive, ascending.
    `compiled=False` runs the same code as plain Python (tests). Raises ValueError if a score
    is NaN.
    """
    scores_t = tuple(np.ascontiguousarray(s) for s in scores)
    if len({s.dtype for s in scores_t}) != 1:
        raise ValueError(f"levels have different score dtypes: {[s.dtype for s in scores_t]}")
    golds_t = tuple(_flags(g) for g in golds)
    kernel = _kernel() if compiled else _rank_metrics
    *sums, nan = kernel(scores_t, golds_t, np.asarray(ks, dtype=np.int64), bool(micro))
    if nan:
        raise ValueError("scores contain NaN")
    return RankSums(*sums)


def _flags(gold: np.ndarray) -> np.ndarray:
    """Gold as one byte per label (bool is reinterpreted, not copied): one kernel type."""
    gold = np.ascontiguousarray(gold)
    if gold.dtype == np.uint8:
        return gold
    if gold.dtype == np.bool_:
        return gold.view(np.uint8)
    return (gold != 0).view(np.uint8)
