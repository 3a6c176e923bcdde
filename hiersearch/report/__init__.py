"""Report: experiment directories (and their hiersearch.json) -> one pandas table of trials
-> the leaderboard."""

from __future__ import annotations

from hiersearch.report.baseline import (
    STATUS_BASELINE,
    compute_baseline,
    read_baseline,
    write_baseline,
)
from hiersearch.report.experiment import META_FILE, read_meta, write_experiment_meta
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
    "META_FILE",
    "STATUS_BASELINE",
    "LeaderboardWarning",
    "compute_baseline",
    "export",
    "filter_rows",
    "group_rows",
    "load_experiments",
    "metric_columns",
    "paper_table",
    "param_columns",
    "read_baseline",
    "read_meta",
    "render",
    "sort_rows",
    "top",
    "write_baseline",
    "write_experiment_meta",
]
