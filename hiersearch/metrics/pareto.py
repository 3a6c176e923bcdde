"""Ranking points of several metrics against each other: domination, non-dominated sorting and
crowding distance (NSGA-II's, Deb et al. 2002).

Every function takes the points as a (points, metrics) array with every metric *minimized*
(`minimized` turns max metrics around) and no NaN: callers decide what a point with a missing
metric is (the leaderboard leaves it off the front, the MO-ASHA rungs rank it last).

The leaderboard's Pareto column is rank 0 of `nondominated_ranks`; the MO-ASHA scheduler
orders a rung's trials by (rank, larger crowding distance first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["crowding_distances", "dominates", "minimized", "nondominated_ranks"]


def minimized(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """`values` (points, metrics) with each "max" metric negated: every metric minimized."""
    signs = np.array([-1.0 if mode == "max" else 1.0 for mode in modes])
    return np.asarray(values, dtype=float) * signs


def dominates(points: np.ndarray) -> np.ndarray:
    """[i, j]: point i dominates point j (at least as good on every metric, better on one)."""
    points = _checked(points)
    ahead, here = points[:, None, :], points[None, :, :]
    return (ahead <= here).all(axis=2) & (ahead < here).any(axis=2)


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Each point's front: 0 for the points no other dominates, 1 for those only points of
    front 0 dominate, and so on. Equal points share a front."""
    beaten_by = dominates(points)
    ranks = np.full(len(beaten_by), -1)
    left = np.ones(len(beaten_by), dtype=bool)
    front = 0
    while left.any():
        # dominated by no point still left: the next front (a strict partial order has one)
        current = left & ~(beaten_by & left[:, None]).any(axis=0)
        ranks[current] = front
        left &= ~current
        front += 1
    return ranks


def crowding_distances(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within `points` (one front): per metric, the
    gap between its two neighbours over the metric's range, summed; the points at either end
    of a metric get infinity (between equal values, the first in `points` order). A metric on
    which all points agree adds nothing."""
    points = _checked(points)
    count, metrics = points.shape
    distance = np.zeros(count)
    if count <= 2:
        return np.full(count, np.inf)
    for metric in range(metrics):
        order = np.argsort(points[:, metric], kind="stable")
        column = points[order, metric]
        span = column[-1] - column[0]
        if span == 0:
            continue
        distance[order[0]] = distance[order[-1]] = np.inf
        distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def _checked(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be a (points, metrics) array, got shape {points.shape}")
    if np.isnan(points).any():
        raise ValueError("points must not hold NaN: leave out or rank apart the incomplete ones")
    return points
