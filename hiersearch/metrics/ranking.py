"""Ranking metrics of the reporter and the one place metric keys are named.

R-Precision of a document with R gold labels (in the label set considered) is the fraction of
its R highest-scored labels that are gold; documents with R = 0 are skipped and counted.
RP@k = (#gold in top k) / min(k, R) and nDCG@k = DCG@k / IDCG@k with IDCG over min(k, R)
relevant positions (Chalkidis et al. 2019), averaged over the documents with R > 0.

Ties: every ranking metric here is the EXPECTATION over a uniformly random order among labels
with equal scores (McSherry & Najork 2008). So the result does not depend on the column order:
a label at a rank held by a tie group of c labels, g of them gold, counts as g / c relevant.
Without ties this is the ordinary value.

Speed (57,000 docs x 7,341 labels is the target; no row is ever fully sorted): rows are
processed in chunks of ~8M scores on a thread pool (the kernels release the GIL). Every metric
of a row depends only on where its gold labels rank, so the compiled path (`goldrank.py`)
compares each row's scores with its few gold scores in one vectorized pass and stops a count
once it passes the deepest rank asked for (max(R, k)). Without numba, the numpy path lists each
row's top (depth + 1) values: a cut from strided-block maxima in one pass, then only the few
values above it are gathered and sorted (see `_cut`); micro merges the levels' candidates
above a cut over all levels' block maxima. Both resolve ties exactly.
Multi-hot gold as bool/uint8 is fastest (other dtypes cost one more pass).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from hiersearch.metrics import goldrank

DEFAULT_METRIC = "dev/rp_macro"
DEFAULT_MODE = "max"

EPOCH = "epoch"
SAMPLES_PER_SECOND = "train/samples_per_s"
LEARNING_RATE = "train/lr"
TRAIN_STEP = "train/step"
EPOCH_SECONDS = "train/epoch_s"
PEAK_MEMORY_MB = "train/peak_mem_mb"

# reported with the metrics but describing the trial, not measuring it ("trial/" prefix)
TRIAL_BEST_EPOCH = "trial/best_epoch"
TRIAL_VARIANT = "trial/variant"
TRIAL_ASSIGNMENT = "trial/assignment"
TRIAL_STOP_REASON = "trial/stop_reason"
TRIAL_NODE_ID = "trial/node_id"
TRIAL_WORLD_SIZE = "trial/world_size"
TRIAL_FINAL = "trial/final"

UTIL_CLS_ANGLE_MEAN = "util/cls_angle_mean"
UTIL_LAYER_KL_MEAN = "util/layer_kl_mean"
UTIL_ENTROPY_MEAN = "util/entropy_mean"
UTIL_HEAD_KL_MEAN = "util/head_kl_mean"

_SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# scores per row chunk: bounds the temporaries of one chunk (~32 MB of float32 per worker)
_CHUNK_ELEMENTS = 1 << 23
# Gold ranks from the compiled kernel (`goldrank.py`) when numba loads; False: numpy top lists.
COMPILED = True


def _split(split: str) -> str:
    if not _SPLIT_RE.match(split):
        raise ValueError(f"bad split name {split!r}")
    return split


def _positive(value: int, what: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def rp_level_key(split: str, level: int) -> str:
    return f"{_split(split)}/rp_L{_positive(level, 'level')}"


def rp_level_keys(split: str, num_levels: int) -> list[str]:
    return [rp_level_key(split, level) for level in range(1, num_levels + 1)]


def rp_micro_key(split: str) -> str:
    return f"{_split(split)}/rp_micro"


def rp_macro_key(split: str) -> str:
    return f"{_split(split)}/rp_macro"


def _level_suffix(level: int | None) -> str:
    return "" if level is None else f"_L{_positive(level, 'level')}"


def rp_at_k_key(split: str, k: int, level: int | None = None) -> str:
    return f"{_split(split)}/rp@{_positive(k, 'k')}{_level_suffix(level)}"


def ndcg_at_k_key(split: str, k: int, level: int | None = None) -> str:
    return f"{_split(split)}/ndcg@{_positive(k, 'k')}{_level_suffix(level)}"


def loss_key(split: str) -> str:
    return f"{_split(split)}/loss"


def skipped_key(split: str, level: int | None = None) -> str:
    """Documents skipped by R-Precision (R = 0): micro by default, or of one level."""
    return f"{_split(split)}/rp_skipped_docs{_level_suffix(level)}"


def eval_seconds_key(split: str) -> str:
    return f"{_split(split)}/eval_s"


def util_entropy_key(layer: int) -> str:
    return f"util/entropy_layer{_positive(layer, 'layer'):02d}"


def util_head_kl_key(layer: int) -> str:
    return f"util/head_kl_layer{_positive(layer, 'layer'):02d}"


_METRIC_RE = re.compile(
    r"^[A-Za-z][A-Za-z0-9_-]*/(rp_L\d+|rp_micro|rp_macro|(rp|ndcg)@\d+(_L\d+)?|loss"
    r"|rp_skipped_docs(_L\d+)?|eval_s)$"
    r"|^util/((entropy|head_kl)_layer\d+|(cls_angle|layer_kl|entropy|head_kl)_mean)$"
)
_TRAIN_KEYS = {SAMPLES_PER_SECOND, LEARNING_RATE, TRAIN_STEP, EPOCH_SECONDS, PEAK_MEMORY_MB}
_LOWER_IS_BETTER = re.compile(r"/(loss|rp_skipped_docs(_L\d+)?|eval_s|epoch_s|peak_mem_mb)$")


def is_metric_key(key: str) -> bool:
    """Whether `key` is a metric named by this module (what a search may optimize)."""
    return key in _TRAIN_KEYS or bool(_METRIC_RE.match(key))


def mode_of(key: str) -> str:
    """ "min" for losses, counts of skipped documents and times; "max" otherwise."""
    return "min" if _LOWER_IS_BETTER.search(key) else "max"


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


class _Cut(NamedTuple):
    """Where a row's top values start: `maxima` of blocks partitioning the row, and `cut`."""

    maxima: np.ndarray  # rows x blocks; for narrow rows the values themselves
    cut: np.ndarray  # rows x 1: at least m values of the row are >= cut
    whole: bool  # narrow rows: keep them whole instead of cutting


def _cut(scores: np.ndarray, m: int) -> _Cut:
    """A cut that at least m values of every row reach, without sorting rows.

    Wide rows: strided blocks (block j = columns j, j + nb, j + 2nb, ..), whose maxima are an
    elementwise max of contiguous slices (one fast pass); the m-th largest block maximum is a
    cut, since the m largest maxima are m distinct values at or above it, and it is usually
    only a little below the m-th largest value. Narrower rows: the m-th largest value itself.
    """
    rows, cols = scores.shape
    nb = min(cols, 8 * m)
    width = cols // nb
    if width >= 4:
        maxima = scores[:, : nb * width].reshape(rows, width, nb).max(axis=1)
        tail = scores[:, nb * width :]  # fewer than `width` columns: extra members of blocks 0..
        maxima[:, : tail.shape[1]] = np.maximum(maxima[:, : tail.shape[1]], tail)
    else:
        maxima = scores
    if np.isnan(maxima).any():
        raise ValueError("scores contain NaN")
    whole = cols <= max(4 * m, 64)
    cut = maxima.min(axis=1, keepdims=True) if whole else _kth_largest(maxima, m)
    return _Cut(maxima, cut, whole)


def _kth_largest(values: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value of each row (rows x 1); -inf where a row has fewer than k."""
    cols = values.shape[1]
    if k > cols:
        return np.full((values.shape[0], 1), -np.inf, dtype=values.dtype)
    return np.partition(values, cols - k, axis=1)[:, cols - k, None]


def _at_least(scores: np.ndarray, cut: np.ndarray, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """The values >= cut of each row and their columns, padded with (-inf, column 0).

    Padding can only rank among a row's top values below a real -inf: a tie group that then
    reaches the end of the list, which _expected_found re-counts over the full row.
    """
    rows, cols = scores.shape
    if whole:
        return scores, np.broadcast_to(np.arange(cols), scores.shape)
    flat = np.flatnonzero(scores >= cut)
    row = flat // cols
    counts = np.bincount(row, minlength=rows)
    slot = np.arange(flat.size) - (np.cumsum(counts) - counts)[row]
    values = np.full((rows, int(counts.max(initial=1))), -np.inf, dtype=scores.dtype)
    columns = np.zeros(values.shape, dtype=np.int64)
    values[row, slot] = scores.reshape(-1)[flat]
    columns[row, slot] = flat - row * cols
    return values, columns


def _sort_desc(values: np.ndarray, payload: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m largest values of each row, descending, with their payload (ints < 2**32).

    float32 values are sorted as one uint64 key (order-preserving bits above the payload):
    a plain sort is several times faster than argsort plus two gathers.
    """
    if values.shape[1] > 4 * m:  # many values tied at a cut: narrow them down first
        keep = np.argpartition(values, values.shape[1] - m, axis=1)[:, -m:]
        values = np.take_along_axis(values, keep, axis=1)
        payload = np.take_along_axis(payload, keep, axis=1)
    if values.dtype != np.float32:
        order = np.argsort(values, axis=1)[:, : -m - 1 : -1]
        return np.take_along_axis(values, order, axis=1), np.take_along_axis(payload, order, 1)
    bits = values.view(np.uint32)
    ordered = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
    keys = np.sort((ordered << np.uint64(32)) | payload.astype(np.uint64), axis=1)
    keys = keys[:, : -m - 1 : -1]
    high = (keys >> np.uint64(32)).astype(np.uint32)
    back = np.where(high >> 31, high & np.uint32((1 << 31) - 1), ~high)
    return back.view(np.float32), (keys & np.uint64((1 << 32) - 1)).astype(np.int64)


class _Ranked(NamedTuple):
    """A row chunk's view of one label set (a level, or all levels for micro)."""

    values: np.ndarray  # top values per row, descending
    gains: np.ndarray  # whether the label at each of those ranks is gold
    complete: bool  # the values are whole rows (nothing ranks below them)
    r: np.ndarray  # gold labels per row
    pieces: tuple[tuple[np.ndarray, np.ndarray], ...]  # full (scores, gold) rows, for big ties


def _expected_found(ranked: _Ranked, ranks: np.ndarray) -> np.ndarray:
    """Expected number of gold labels among the top q, for each row and each q in `ranks`.

    Rows without ties: the gold count of the top q. Rows with ties: with t the q-th value,
    `above` labels score > t and `size` labels score == t, `gold_at` of them gold; the top q hold
    the gold above t plus (q - above) draws from the tie group.
    """
    values, gains = ranked.values, ranked.gains
    m = values.shape[1]
    q = np.minimum(ranks, m)  # past the end of a complete row: the whole row
    found = np.take_along_axis(np.cumsum(gains, axis=1), q - 1, axis=1).astype(np.float64)
    tied = np.flatnonzero((values[:, 1:] == values[:, :-1]).any(axis=1))
    if tied.size == 0:
        return found
    v, g, qt = values[tied, None, :], gains[tied, None, :], q[tied]
    t = np.take_along_axis(values[tied], qt - 1, axis=1)[:, :, None]
    above, at = v > t, v == t
    n_above = np.count_nonzero(above, axis=2)
    gold_above = np.count_nonzero(above & g, axis=2)
    size = np.count_nonzero(at, axis=2)
    gold_at = np.count_nonzero(at & g, axis=2)
    reach = n_above + size == m
    if not ranked.complete and reach.any():
        # the tie group runs past the listed values: count it over the full rows
        sub = np.flatnonzero(reach.any(axis=1))
        rows, last = tied[sub], values[tied[sub], m - 1, None]
        full_size, full_gold = np.zeros(sub.size, np.int64), np.zeros(sub.size, np.int64)
        for piece_scores, piece_gold in ranked.pieces:
            same = piece_scores[rows] == last
            full_size += np.count_nonzero(same, axis=1)
            full_gold += np.count_nonzero(same & (piece_gold[rows] != 0), axis=1)
        size[sub] = np.where(reach[sub], full_size[:, None], size[sub])
        gold_at[sub] = np.where(reach[sub], full_gold[:, None], gold_at[sub])
    found[tied] = gold_above + (qt - n_above) * gold_at / size
    return found


class _Sums(NamedTuple):
    """Per-document metric values of one chunk, summed over documents with R > 0."""

    per_doc: np.ndarray  # R-Precision per document, NaN where R = 0
    docs: int
    skipped: int
    rp_at: np.ndarray  # one sum per k
    ndcg_at: np.ndarray  # one sum per k


def _rank_targets(r: np.ndarray, kmax: int) -> np.ndarray:
    """The ranks each row is asked about: R (at least 1), then 1..kmax."""
    return np.concatenate(
        [np.maximum(r, 1)[:, None], np.broadcast_to(np.arange(1, kmax + 1), (r.size, kmax))],
        axis=1,
    )


def _sums(found: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> _Sums:
    """Metric sums from the expected gold count of the top q (`found`, columns as in
    `_rank_targets`)."""
    kmax = max(ks, default=0)
    keep = r > 0
    per_doc = np.full(r.shape, np.nan)
    per_doc[keep] = found[keep, 0] / r[keep]
    rk, fk = r[keep, None], found[keep, 1:]
    rp_at = np.zeros(len(ks))
    ndcg_at = np.zeros(len(ks))
    if ks:
        discount = 1.0 / np.log2(np.arange(2, kmax + 2))
        gain = np.diff(fk, axis=1, prepend=0.0)
        dcg = np.cumsum(gain * discount, axis=1)
        ideal = np.cumsum(discount)
        for i, k in enumerate(ks):
            best = np.minimum(k, rk[:, 0])
            rp_at[i] = (fk[:, k - 1] / best).sum()
            ndcg_at[i] = (dcg[:, k - 1] / ideal[best - 1]).sum()
    return _Sums(per_doc, int(keep.sum()), int((~keep).sum()), rp_at, ndcg_at)


def _score(ranked: _Ranked, ks: Sequence[int]) -> _Sums:
    found = _expected_found(ranked, _rank_targets(ranked.r, max(ks, default=0)))
    return _sums(found, ranked.r, ks)


def _depth(width: int, r: np.ndarray, kmax: int) -> int:
    """How far a chunk's rows are ranked: max(R, k) + 1 (one rank more, so that a tie across
    the cut is seen), at most the whole row."""
    return min(width, max(int(r.max(initial=0)), kmax, 1) + 1)


def _chunk_compiled(
    scores: Sequence[np.ndarray], golds: Sequence[np.ndarray], ks: Sequence[int], micro: bool
) -> list[_Sums]:
    """`_chunk` from where each gold label ranks (`goldrank.py`: one compiled pass over the
    scores, no top lists)."""
    dtype = np.result_type(*scores)
    sums = goldrank.rank_metrics([s.astype(dtype, copy=False) for s in scores], golds, ks, micro)
    return [
        _Sums(sums.per_doc[:, t], int(sums.docs[t]), int(sums.skipped[t]), sums.rp_at[t],
              sums.ndcg_at[t])
        for t in range(sums.docs.size)
    ]


def _chunk(
    scores: Sequence[np.ndarray], golds: Sequence[np.ndarray], ks: Sequence[int], micro: bool
) -> list[_Sums]:
    """Sums of one row chunk: one per level, then micro (if asked).

    Each level is ranked to its own depth, max(R, k) + 1 (one rank more, so that a tie across
    the cut is seen). Micro needs the top of all levels together: a cut over the block maxima
    of all levels bounds it, and each level adds its values above that cut to the merge.
    """
    kmax = max(ks, default=0)
    rs = [np.count_nonzero(g, axis=1) for g in golds]
    ms = [_depth(s.shape[1], r, kmax) for s, r in zip(scores, rs, strict=True)]
    cuts = [_cut(s, m) for s, m in zip(scores, ms, strict=True)]
    if micro:
        r_micro = np.sum(rs, axis=0)
        total = sum(s.shape[1] for s in scores)
        m_micro = _depth(total, r_micro, kmax)
        micro_cut = _kth_largest(np.concatenate([c.maxima for c in cuts], axis=1), m_micro)
    out, candidates = [], []
    for s, g, r, m, cut in zip(scores, golds, rs, ms, cuts, strict=True):
        values, columns = _at_least(
            s, np.minimum(cut.cut, micro_cut) if micro else cut.cut, cut.whole
        )
        gains = np.take_along_axis(g, columns, axis=1) != 0
        candidates.append((values, gains))
        values, columns = _sort_desc(values, columns, m)
        gains = np.take_along_axis(g, columns, axis=1) != 0
        out.append(_score(_Ranked(values, gains, m == s.shape[1], r, ((s, g),)), ks))
    if micro:
        # all values above the micro cut, from every level: the global top list is among them
        values, gains = _sort_desc(
            np.concatenate([v for v, _ in candidates], axis=1),
            np.concatenate([g for _, g in candidates], axis=1),
            m_micro,
        )
        pieces = tuple(zip(scores, golds, strict=True))
        ranked = _Ranked(values, gains != 0, m_micro == total, r_micro, pieces)
        out.append(_score(ranked, ks))
    return out


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _run(
    scores: Sequence[np.ndarray], golds: Sequence[np.ndarray], ks: Sequence[int], micro: bool
) -> list[_Sums]:
    """Chunked over rows (bounded temporaries) on a thread pool: numpy releases the GIL."""
    rows = scores[0].shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(sum(s.shape[1] for s in scores), 1))
    parts = [slice(i, min(i + step, rows)) for i in range(0, rows, step)]

    chunk = _chunk_compiled if goldrank.available() and COMPILED else _chunk

    def work(part: slice) -> list[_Sums]:
        return chunk([s[part] for s in scores], [g[part] for g in golds], ks, micro)

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
    return sorted({_positive(k, "k") for k in ks})


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
    (sums,) = _run([scores], [_gold(y_true, scores.shape)], [_positive(k, "k")], micro=False)
    return _mean(sums.rp_at[0], sums.docs)


def ndcg_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    scores = _scores(y_score)
    (sums,) = _run([scores], [_gold(y_true, scores.shape)], [_positive(k, "k")], micro=False)
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
