"""Search: space files -> checked spec -> Optuna define-by-run; the space of layer-to-level
assignments; what is settled before Ray starts (checks, the shared corpus); the Ray Tune
driver and its MO-ASHA scheduler (imported by the driver: it imports Ray); the cluster
connection."""

from __future__ import annotations

from hiersearch.search.assignment_space import (
    SpaceOptions,
    space_size,
    space_summary,
    suggest_assignment,
)
from hiersearch.search.driver import run_search
from hiersearch.search.preflight import prepare_data
from hiersearch.search.space import SpaceFile, load_space, parse_space, preset_path, presets

__all__ = [
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
