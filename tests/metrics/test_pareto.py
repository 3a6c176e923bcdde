"""Non-dominated sorting and crowding distance, every metric minimized."""

from __future__ import annotations

import numpy as np
import pytest

from hiersearch.metrics.pareto import (
    crowding_distances,
    dominates,
    minimized,
    nondominated_ranks,
)


def test_max_metrics_are_negated() -> None:
    assert minimized(np.array([[0.7, 6.0]]), ["max", "min"]).tolist() == [[-0.7, 6.0]]


def test_a_point_dominates_one_it_beats_on_one_metric_and_ties_on_the_rest() -> None:
    beats = dominates(np.array([[1.0, 2.0], [1.0, 3.0], [0.0, 4.0]]))
    assert beats.tolist() == [
        [False, True, False],
        [False, False, False],
        [False, False, False],
    ]


def test_ranks_peel_the_fronts_off_one_after_another() -> None:
    points = np.array([[1, 5], [2, 2], [5, 1], [2, 5], [3, 3], [4, 4], [6, 6]], dtype=float)
    assert nondominated_ranks(points).tolist() == [0, 0, 0, 1, 1, 2, 3]


def test_equal_points_share_a_front() -> None:
    assert nondominated_ranks(np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])).tolist() == [
        0, 0, 1]


def test_crowding_distance_is_infinite_at_the_ends_and_larger_where_the_front_is_sparse() -> None:
    front = np.array([[0.0, 10.0], [1.0, 9.0], [2.0, 8.0], [9.0, 1.0], [10.0, 0.0]])
    distance = crowding_distances(front)
    assert np.isinf(distance[[0, 4]]).all()
    # (2 - 0) / 10 on each metric for the crowded one, (9 - 1) / 10 for the isolated one
    assert distance[1] == pytest.approx(0.4)
    assert distance[3] == pytest.approx(1.6)
    assert distance[3] > distance[1]


def test_a_metric_all_points_share_adds_no_distance() -> None:
    distance = crowding_distances(np.array([[0.0, 3.0], [1.0, 3.0], [4.0, 3.0]]))
    assert distance[1] == pytest.approx(1.0)  # (4 - 0) / 4 from the first metric only


def test_nan_points_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        nondominated_ranks(np.array([[1.0, np.nan]]))
