"""Ranking metrics of the reporter: R-Precision (per level, micro, macro), RP@k and nDCG@k.

R-Precision of a document with R gold labels (in the label set considered) is the fraction of
its R highest-scored labels that are gold; documents with R = 0 are skipped and counted.
RP@k = (#gold in top k) / min(k, R) and nDCG@k = DCG@k / IDCG@k with IDCG over min(k, R)
relevant positions (Chalkidis et al. 2019), averaged over the documents with R > 0.

Ties: every ranking metric here is the EXPECTATION over a uniformly random order among labels
with equal scores (McSherry & Najork 2008). So the result does not depend on the column order:
a label at a rank held by a tie group of c labels, g of them gold, counts as g / c relevant.
Without ties this is the ordinary value.

Speed (57,000 docs x 7,341 labels is the target; no row is ever fully sorted): rows are
processed in chunks of ~8M scores on a thread pool (the kernel releases the GIL). Every metric
of a row depends only on where its gold labels rank, so the compiled kernel (`goldrank.py`,
numba) compares each row's scores with its few gold scores in one vectorized pass and stops a
count once it passes the deepest rank asked for (max(R, k)); ties are resolved exactly.
Multi-hot gold as bool/uint8 is fastest (other dtypes cost one more pass).
`r_precision_reference` is the plain per-document loop the kernel is tested against.

The metric key names live in `keys.py`; the ones used with this module are importable from
here too (`ranking.EPOCH`, `ranking.loss_key`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from hiersearch.metrics import goldrank
from hiersearch.metrics.keys import (
    ndcg_at_k_key,
    positive,
    rp_at_k_key,
    rp_level_key,
    rp_macro_key,
    rp_micro_key,
    skipped_key,
)

__all__ = [
    "evaluate",
    "ndcg_at_k",
    "r_precision",
    "r_precision_per_doc",
    "r_precision_reference",
    "rp_at_k",
]

# scores per row chunk: bounds the temporaries of one chunk (~32 MB of float32 per worker)
_CHUNK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------- inputs


def _scores(array: np.ndarray) -> np.ndarray:
    scores = np.asarray(array)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [docs, labels], got shape {scores.shape}")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32 if scores.dtype.itemsize <= 2 else np.float64)
    return np.ascontiguousarray(scores)


def _gold(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    gold = np.ascontiguousarray(np.asarray(array))
    if gold.shape != shape:
        raise ValueError(f"gold shape {gold.shape} != scores shape {shape}")
    return gold


# ----------------------------------------------------------------------------- core


class _Sums(NamedTuple):
    """Per-document metric values of one chunk, summed over documents with R > 0."""

    per_doc: np.ndarray  # R-Precision per document, NaN where R = 0
    docs: int
    skipped: int
    rp_at: np.ndarray  # one sum per k
    ndcg_at: np.ndarray  # one sum per k


def _chunk(
    scores: Sequence[np.ndarray], golds: Sequence[np.ndarray], ks: Sequence[int], micro: bool
) -> list[_Sums]:
    """Sums of one row chunk: one per level, then micro (if asked), from where each gold label
    ranks (`goldrank.py`: one compiled pass over the scores, no top lists)."""
    dtype = np.result_type(*scores)
    sums = goldrank.rank_metrics([s.astype(dtype, copy=False) for s in scores], golds, ks, micro)
    return [
        _Sums(sums.per_doc[:, t], int(sums.docs[t]), int(sums.skipped[t]), sums.rp_at[t],
              sums.ndcg_at[t])
        for t in range(sums.docs.size)
    ]


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _run(
    scores: Sequence[np.ndarray], golds: Sequence[np.ndarray], ks: Sequence[int], micro: bool
) -> list[_Sums]:
    """Chunked over rows (bounded temporaries) on a thread pool: the kernel releases the GIL."""
    rows = scores[0].shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(sum(s.shape[1] for s in scores), 1))
    parts = [slice(i, min(i + step, rows)) for i in range(0, rows, step)]

    def work(part: slice) -> list[_Sums]:
        return _chunk([s[part] for s in scores], [g[part] for g in golds], ks, micro)

    if len(parts) > 1 and _workers() > 1:
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            results = list(pool.map(work, parts))
    else:
        results = [work(part) for part in parts]
    targets = len(scores) + int(micro)
    if not results:
        empty = _Sums(np.empty(0), 0, 0, np.zeros(len(ks)), np.zeros(len(ks)))
        return [empty] * targets
    return [
        _Sums(
            np.concatenate([res[i].per_doc for res in results]),
            sum(res[i].docs for res in results),
            sum(res[i].skipped for res in results),
            np.sum([res[i].rp_at for res in results], axis=0),
            np.sum([res[i].ndcg_at for res in results], axis=0),
        )
        for i in range(targets)
    ]


def _mean(total: float, docs: int) -> float:
    return float(total) / docs if docs else float("nan")


def _check_ks(ks: Iterable[int]) -> list[int]:
    return sorted({positive(k, "k") for k in ks})


# ----------------------------------------------------------------------------- public


def r_precision_per_doc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-document R-Precision (NaN where R = 0) and the mask of documents with R > 0."""
    scores = _scores(y_score)
    (sums,) = _run([scores], [_gold(y_true, scores.shape)], [], micro=False)
    return sums.per_doc, ~np.isnan(sums.per_doc)


def r_precision(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, int]:
    """Mean R-Precision over documents with R > 0, and the number of documents skipped."""
    scores = _scores(y_score)
    (sums,) = _run([scores], [_gold(y_true, scores.shape)], [], micro=False)
    return _mean(np.nansum(sums.per_doc), sums.docs), sums.skipped


def rp_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    scores = _scores(y_score)
    (sums,) = _run([scores], [_gold(y_true, scores.shape)], [positive(k, "k")], micro=False)
    return _mean(sums.rp_at[0], sums.docs)


def ndcg_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    scores = _scores(y_score)
    (sums,) = _run([scores], [_gold(y_true, scores.shape)], [positive(k, "k")], micro=False)
    return _mean(sums.ndcg_at[0], sums.docs)


def evaluate(
    y_true: Sequence[np.ndarray],
    y_score: Sequence[np.ndarray],
    split: str,
    ks: Iterable[int] = range(1, 11),
) -> dict[str, float]:
    """All ranking metrics of one split: one [docs, labels of level n] array per level.

    Per level: R-Precision, skipped documents, RP@k, nDCG@k. Micro: the same over the levels'
    columns concatenated. Macro: mean of the per-level R-Precision values (a level where every
    document is skipped is NaN and left out; NaN if all are).
    """
    if len(y_true) != len(y_score) or not y_score:
        raise ValueError(f"{len(y_true)} gold arrays for {len(y_score)} score arrays")
    scores = [_scores(s) for s in y_score]
    golds = [_gold(g, s.shape) for g, s in zip(y_true, scores, strict=True)]
    if len({s.shape[0] for s in scores}) != 1:
        raise ValueError(f"levels disagree on the number of documents: {[len(s) for s in scores]}")
    ks = _check_ks(ks)
    *levels, micro = _run(scores, golds, ks, micro=True)
    out: dict[str, float] = {}
    for level, sums in enumerate(levels, start=1):
        out[rp_level_key(split, level)] = _mean(np.nansum(sums.per_doc), sums.docs)
        out[skipped_key(split, level)] = sums.skipped
        for i, k in enumerate(ks):
            out[rp_at_k_key(split, k, level)] = _mean(sums.rp_at[i], sums.docs)
            out[ndcg_at_k_key(split, k, level)] = _mean(sums.ndcg_at[i], sums.docs)
    out[rp_micro_key(split)] = _mean(np.nansum(micro.per_doc), micro.docs)
    out[skipped_key(split)] = micro.skipped
    per_level = np.array([out[rp_level_key(split, n)] for n in range(1, len(levels) + 1)])
    valid = per_level[~np.isnan(per_level)]
    out[rp_macro_key(split)] = float(valid.mean()) if valid.size else float("nan")
    for i, k in enumerate(ks):
        out[rp_at_k_key(split, k)] = _mean(micro.rp_at[i], micro.docs)
        out[ndcg_at_k_key(split, k)] = _mean(micro.ndcg_at[i], micro.docs)
    return out


def r_precision_reference(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, int]:
    """Straightforward per-document loop (full sort per row), same tie rule; for tests/bench."""
    scores, gold = np.asarray(y_score), np.asarray(y_true) != 0
    values, skipped = [], 0
    for row, truth in zip(scores, gold, strict=True):
        r = int(truth.sum())
        if r == 0:
            skipped += 1
            continue
        threshold = np.sort(row)[::-1][r - 1]
        above, same = row > threshold, row == threshold
        # all labels above the threshold are in the top R; the rest of it is drawn from the tie
        expected = truth[above].sum() + (r - above.sum()) * truth[same].sum() / same.sum()
        values.append(expected / r)
    return (float(np.mean(values)) if values else float("nan")), skipped
