"""Report: experiment directories -> one pandas table of trials -> the leaderboard."""

from __future__ import annotations

from hiersearch.report.leaderboard import (
    FORMATS,
    export,
    filter_rows,
    group_rows,
    paper_table,
    render,
    sort_rows,
    top,
)
from hiersearch.report.results import (
    LeaderboardWarning,
    load_experiments,
    metric_columns,
    param_columns,
)

__all__ = [
    "FORMATS",
    "LeaderboardWarning",
    "export",
    "filter_rows",
    "group_rows",
    "load_experiments",
    "metric_columns",
    "paper_table",
    "param_columns",
    "render",
    "sort_rows",
    "top",
]
