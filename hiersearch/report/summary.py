"""The machine-readable summary of a finished `search` or `reproduce` (`--json`): one JSON
object, its shape fixed by `SUMMARY_JSON_SCHEMA` (schema "hiersearch.summary/1").

    {"schema": "hiersearch.summary/1", "command": "search", "experiment": PATH_OR_URI,
     "metric": "dev/rp_macro", "mode": "max",
     "trials": {"total": 7, "by_status": {"terminated": 5, "stopped early": 2}},
     "best": {"trial_id": ..., "status": "terminated", "variant": ..., "assignment": ...,
              "checkpoint": PATH_OR_URI, "config": {TrialConfig fields},
              "metrics": {"dev/rp_macro": 0.61, ...}} or null,
     "baseline": {"name": "TF-IDF 20-NN", "metrics": {...}} or null,
     "ensemble": {"mode": "per_level", "members": [{"kind", "trial_id", "weights"}, ...],
                  "metrics": {...}, "seconds": 3.1, "skipped": [{"member", "reason"}],
                  "others": {"global": {"members": [...], "metrics": {...}}}} or null,
     "export_command": "hiersearch export PATH --trial ID --out models/ID" or null}

"best" is the trial `hiersearch export --best` picks (the best finished trial with a
checkpoint by the experiment's metric), null when there is none; its metrics are the finite
numbers among its leaderboard metric columns, its config the resolved `config.json` of its
final checkpoint. "baseline" is the experiment's TF-IDF k-NN row (`baseline.py`), not counted
among the trials: {"name": "TF-IDF 20-NN", "metrics": {...}}, or null when none was computed.
"ensemble" is the experiment's `ensemble.json` (`ensemble.py`), not counted among the trials
either: the served selection (the leaderboard's row: its mode, members with their weights per
level, metrics, fit seconds, members skipped and why) and the other selection under "others"
(per level or global: both are reported); null when none was fitted.
A two-stage search's summary also has "stages": {"screen": {"trials": N, "best": {"trial_id",
"assignment", "metric"} or null}, "finetune": {...}}.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.report.baseline import STATUS_BASELINE
from hiersearch.report.ensemble import (
    KINDS,
    MODES,
    Ensemble,
    read_ensemble_file,
)
from hiersearch.report.experiment import open_location, read_meta, read_text
from hiersearch.report.results import STAGE_COLUMN, metric_columns, trial_rows

SCHEMA = "hiersearch.summary/1"

_TEXT_OR_NULL = {"type": ["string", "null"]}
_METRICS = {"type": "object", "additionalProperties": {"type": "number"}}
_SELECTION = {
    "type": "object",
    "required": ["mode", "members", "metrics"],
    "properties": {
        "mode": {"enum": list(MODES)},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "trial_id", "weights"],
                "properties": {
                    "kind": {"enum": list(KINDS)},
                    "trial_id": _TEXT_OR_NULL,
                    "weights": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
        "metrics": _METRICS,
        "seconds": {"type": "number"},
        "skipped": {"type": "array"},
        "others": {"type": "object"},
    },
}
_ENSEMBLE = _SELECTION
SUMMARY_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "command", "experiment", "metric", "mode", "trials", "best",
                 "baseline", "ensemble", "export_command"],
    "properties": {
        "schema": {"const": SCHEMA},
        "command": {"enum": ["search", "reproduce"]},
        "experiment": {"type": "string"},
        "metric": {"type": "string"},
        "mode": {"enum": ["max", "min"]},
        "trials": {
            "type": "object",
            "additionalProperties": False,
            "required": ["total", "by_status"],
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "by_status": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 1},
                },
            },
        },
        "best": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["trial_id", "status", "variant", "assignment", "checkpoint",
                                 "config", "metrics"],
                    "properties": {
                        "trial_id": {"type": "string"},
                        "status": {"type": "string"},
                        "variant": _TEXT_OR_NULL,
                        "assignment": _TEXT_OR_NULL,
                        "checkpoint": {"type": "string"},
                        "config": {"type": ["object", "null"]},
                        "metrics": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                        },
                    },
                },
            ]
        },
        "baseline": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "metrics"],
                    "properties": {
                        "name": {"type": "string"},
                        "metrics": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                        },
                    },
                },
            ]
        },
        "ensemble": {"oneOf": [{"type": "null"}, _ENSEMBLE]},
        "export_command": _TEXT_OR_NULL,
        "stages": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["trials", "best"],
                "properties": {
                    "trials": {"type": "integer", "minimum": 0},
                    "best": {"type": ["object", "null"]},
                },
            },
        },
    },
}


def run_summary(
    command: str,
    experiment: str,
    table: pd.DataFrame,
    best: pd.Series | None,
    export_command: str | None,
) -> dict[str, Any]:
    """The summary object of `experiment` (its leaderboard `table`, its `best` row)."""
    meta = read_meta(experiment) or {}
    baselines = table[table["status"] == STATUS_BASELINE]
    trials = trial_rows(table)
    counts = trials["status"].value_counts(sort=False)
    return {
        "schema": SCHEMA,
        "command": command,
        "experiment": experiment,
        "metric": str(meta.get("metric") or M.DEFAULT_METRIC),
        "mode": meta.get("mode") if meta.get("mode") in ("max", "min") else M.DEFAULT_MODE,
        "trials": {
            "total": len(trials),
            "by_status": {str(status): int(n) for status, n in sorted(counts.items())},
        },
        "best": None if best is None else _best(best, metric_columns(table)),
        "baseline": None if baselines.empty else _baseline(baselines.iloc[0], table),
        "ensemble": _ensemble(experiment),
        "export_command": export_command,
        **({"stages": _stages(trials, meta)} if STAGE_COLUMN in table.columns else {}),
    }


def _stages(trials: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """Per stage of a two-stage search: its trial count and its best finished trial."""
    metric = str(meta.get("metric") or M.DEFAULT_METRIC)
    mode = meta.get("mode") if meta.get("mode") in ("max", "min") else M.DEFAULT_MODE
    out = {}
    for stage, rows in trials.groupby(STAGE_COLUMN, sort=False):
        done = rows[rows["status"] == "terminated"]
        if metric in done.columns:
            done = done[pd.to_numeric(done[metric], errors="coerce").notna()]
        best = None
        if metric in done.columns and not done.empty:
            top = done.sort_values(metric, ascending=mode == "min", kind="stable").iloc[0]
            best = {"trial_id": str(top["trial_id"]), "assignment": _text(top["assignment"]),
                    "metric": float(top[metric])}
        out[str(stage)] = {"trials": len(rows), "best": best}
    return out


def _ensemble(experiment: str) -> dict[str, Any] | None:
    """The experiment's ensemble.json as the summary shows it; None when there is none (or it
    cannot be read: the leaderboard warns)."""
    try:
        fitted = read_ensemble_file(experiment)
    except InputError:
        return None
    if fitted is None:
        return None
    out = _selection(fitted.ensemble)
    out["seconds"] = fitted.seconds
    out["skipped"] = [{"member": m, "reason": r} for m, r in fitted.skipped]
    out["others"] = {mode: _selection(e) for mode, e in fitted.ensembles.items()
                     if mode != fitted.served}
    return out


def _selection(ensemble: Ensemble) -> dict[str, Any]:
    """One selection: its used members with their weight per level, and its metrics."""
    return {
        "mode": ensemble.mode,
        "members": [
            {"kind": ensemble.members[m].kind, "trial_id": ensemble.members[m].trial_id,
             "weights": [level[m] for level in ensemble.weights]}
            for m in ensemble.used()
        ],
        "metrics": {k: v for k, v in ensemble.metrics.items() if math.isfinite(v)},
    }


def _baseline(row: pd.Series, table: pd.DataFrame) -> dict[str, Any]:
    return {"name": str(row["variant"]), "metrics": _finite(row, metric_columns(table))}


def _finite(row: pd.Series, metrics: list[str]) -> dict[str, float]:
    return {
        name: float(row[name])
        for name in metrics
        if isinstance(row[name], (int, float)) and math.isfinite(row[name])
    }


def _best(row: pd.Series, metrics: list[str]) -> dict[str, Any]:
    checkpoint = str(row["checkpoint"])
    return {
        "trial_id": str(row["trial_id"]),
        "status": str(row["status"]),
        "variant": _text(row.get("variant")),
        "assignment": _text(row.get("assignment")),
        "checkpoint": checkpoint,
        "config": _checkpoint_config(checkpoint),
        "metrics": _finite(row, metrics),
    }


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(
        value
    )


def _checkpoint_config(checkpoint: str) -> dict[str, Any] | None:
    """The trial config saved in its final checkpoint; None if it cannot be read."""
    filesystem, path = open_location(checkpoint)
    try:
        config = json.loads(read_text(filesystem, f"{path}/config.json") or "")
    except ValueError:
        return None
    return config if isinstance(config, dict) else None
