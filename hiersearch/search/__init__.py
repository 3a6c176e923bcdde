"""Search: space files -> checked spec -> Optuna define-by-run; the space of layer-to-level
assignments; what is settled before Ray starts (checks, the shared corpus); running an
experiment (`run_search`, search/run.py) through the Tune objects search/tuner.py builds (its
MO-ASHA and PBT schedulers import Ray), what runs in a trial (search/trainable.py) and how many
trials run at once (search/concurrency.py); the cluster connection."""

from __future__ import annotations

from hiersearch.search.assignment_space import (
    SpaceOptions,
    space_size,
    space_summary,
    suggest_assignment,
)
from hiersearch.search.preflight import prepare_data
from hiersearch.search.run import RunOptions, run_search
from hiersearch.search.space import SpaceFile, load_space, parse_space, preset_path, presets

__all__ = [
    "RunOptions",
    "SpaceFile",
    "SpaceOptions",
    "load_space",
    "parse_space",
    "prepare_data",
    "preset_path",
    "presets",
    "run_search",
    "space_size",
    "space_summary",
    "suggest_assignment",
]
