"""The top values of every row of a score matrix, with their gold flags: the one pass over the
scores that the ranking metrics need (`metrics.py` scores these short lists).

A compiled kernel (numba) reads each row once, keeping its m largest values in a small sorted
buffer. Values are tested 32 at a time, branch-free, against the buffer's smallest: most blocks
hold nothing that enters, so a row costs about one vectorized comparison per label. Long
lists (micro R-Precision) start from a floor found by one numpy pass, so that only about m
values of a row ever enter. Where numba cannot load,
`metrics.py` builds the same lists with numpy (block maxima, a cut, a sort of what reaches
it): the same result in several passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # numba is a dependency; the numpy path keeps metrics working where it cannot load
    import numba
except ImportError:  # pragma: no cover - exercised by forcing the numpy path in tests
    numba = None


_BLOCK = 32  # values tested together before any of them is looked at alone
_FLOOR_FROM = 16  # lists at least this long start from a floor (`_floors`)


def _top_rows(
    scores: np.ndarray, gold: np.ndarray, m: int, floors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per row: the m largest values descending and whether each is gold; and whether any
    score is NaN. Of values tied at the m-th, the first ones read stay.

    `floors[i]` is a value that at least m values of row i reach (or -inf): while the list
    fills, only values >= it join; once full, only values above the list's smallest. A
    block of the row is looked at value by value only if it holds such a value (or a NaN),
    which a branch-free count over the block's fixed width (vectorized) tells.
    """
    rows, cols = scores.shape
    values = np.full((rows, m), -np.inf, dtype=scores.dtype)
    gains = np.zeros((rows, m), dtype=np.bool_)
    nan = False
    for i in range(rows):
        row, truth, top, hit = scores[i], gold[i], values[i], gains[i]
        filled = 0
        low = floors[i]
        c = 0
        while c < cols:
            end = c + _BLOCK
            if end <= cols:
                hits = 0
                if filled < m:
                    for j in range(_BLOCK):
                        x = row[c + j]
                        hits += (x >= low) + (x != x)
                else:
                    for j in range(_BLOCK):
                        x = row[c + j]
                        hits += (x > low) + (x != x)
                if hits == 0:
                    c = end
                    continue
            else:
                end = cols
            for j in range(c, end):
                x = row[j]
                if filled < m:
                    if not x >= low:
                        if x != x:
                            nan = True
                        continue
                    k = filled
                    filled += 1
                elif x > low:  # replaces the smallest listed value
                    k = m - 1
                else:
                    if x != x:
                        nan = True
                    continue
                while k > 0 and top[k - 1] < x:
                    top[k] = top[k - 1]
                    hit[k] = hit[k - 1]
                    k -= 1
                top[k] = x
                hit[k] = truth[j] != 0
                if filled == m:
                    low = top[m - 1]
            c = end
    return values, gains, nan


def _floors(scores: np.ndarray, m: int) -> np.ndarray:
    """Per row, a value at least m of its values reach: the m-th largest maximum of 4m
    interleaved groups (one vectorized numpy pass). Usually just below the m-th largest value,
    so that few values of the row ever go into the list. -inf for rows too short to gain."""
    rows, cols = scores.shape
    groups = 4 * m
    width = cols // groups
    if m < _FLOOR_FROM or width < 8:  # short lists fill and rise fast: a floor costs more
        return np.full(rows, -np.inf, dtype=scores.dtype)
    maxima = scores[:, : groups * width].reshape(rows, width, groups).max(axis=1)
    # a group holding a NaN has a NaN maximum, which would rank above every value: -inf
    # keeps the floor a floor (the scan reports the NaN)
    maxima = np.where(np.isnan(maxima), -np.inf, maxima)
    return np.partition(maxima, groups - m, axis=1)[:, groups - m].copy()


def _nonzero_rows(gold: np.ndarray) -> np.ndarray:
    """Nonzero entries per row (numpy's count_nonzero along an axis is several passes)."""
    rows, cols = gold.shape
    out = np.zeros(rows, dtype=np.int64)
    for i in range(rows):
        count = 0
        for c in range(cols):
            if gold[i, c] != 0:
                count += 1
        out[i] = count
    return out


_compiled: dict[str, Any] = {}


def _kernel(function: Any) -> Any:
    """A compiled kernel, built on first use (cached on disk by numba across processes)."""
    if function.__name__ not in _compiled:
        # nogil: metrics.py runs row chunks on a thread pool.
        _compiled[function.__name__] = numba.njit(nogil=True, cache=True)(function)
    return _compiled[function.__name__]


def available() -> bool:
    return numba is not None


def top_rows(
    scores: np.ndarray, gold: np.ndarray, m: int, compiled: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(values, gains): each row's m largest scores, descending, and whether the label at each
    is gold. `m` is at most the number of columns; `compiled=False` runs the same code as plain
    Python (tests). Raises ValueError if a score is NaN. Which of several labels tied at the
    m-th value make the list is unspecified: callers count such tie groups over the full row.
    """
    if not 1 <= m <= scores.shape[1]:
        raise ValueError(f"m = {m} outside 1..{scores.shape[1]}")
    kernel = _kernel(_top_rows) if compiled else _top_rows
    values, gains, nan = kernel(scores, gold, m, _floors(scores, m))
    if nan:
        raise ValueError("scores contain NaN")
    return values, gains


def gold_counts(gold: np.ndarray, compiled: bool = True) -> np.ndarray:
    """R: the number of gold (nonzero) entries of each row, as int64."""
    return (_kernel(_nonzero_rows) if compiled else _nonzero_rows)(gold)
