"""Experiment directories -> one pandas table of trials (what `leaderboard.py` shapes).

A location is an experiment directory, or a storage root (`--storage`, e.g. `runs`): a
directory that is no experiment itself stands for every experiment directly in it, as
`tensorboard --logdir runs` reads every run under it; the `experiment` column tells them apart.

Reads Ray Tune's files with json and `pyarrow.fs` (never `ray`): works without a cluster, on a
finished, running or crashed experiment, on local paths and on URIs (s3://, gs://, file://).
Per experiment directory: `hiersearch.json` (optional: name, metric, mode); the newest
`experiment_state-*.json` (`trial_data`: pairs of JSON strings, the trial with `trial_id`,
`status`, `relative_logdir`, `config`, and its runtime with `last_result`); and every trial
directory (one holding params.json, result.json or error.txt): `params.json` (the config),
`result.json` (JSON lines, one per report), `error.txt` (Ray's traceback), `config.json` (the
trial's resolved config, written when it starts).

Columns, in order: experiment, trial_id, status, error (the exception line of error.txt),
variant, assignment, stop_reason, best_epoch, epochs, time_s, node_id, checkpoint (the trial's
final checkpoint: the newest `checkpoint_*` directory, directly in the trial directory or in its
Ray Train run's `train_*/`, that holds model.pt and final_metrics.json; what `hiersearch export`
reads); then the metrics as
reported, dev/*, test/*, train/*, util/*; then other reported trial/* keys; then the
hyper-parameters (params.json, nested dicts flattened with "/"; one named like an identity
column or a metric becomes `param/<name>`), and the head options (`HEAD_OPTION_COLUMNS`) whether
searched or fixed: from config.json, else hiersearch.json's base config with the trial's params
over it; absent in experiments that predate them.

A finished trial shows its final report (the one with trial/stop_reason): it carries the dev
metrics of the selected checkpoint beside that checkpoint's test metrics. Any other trial shows
its last report with train/ and dev/ metrics from its best report by the experiment metric
(hiersearch.json's metric and mode, else dev/rp_macro, max).

The experiment's baseline (`baseline.json`, `baseline.py`: TF-IDF k-NN on its training
documents) is one more row, of status "baseline", named in the variant column; its ensemble
(`ensemble.json`, `ensemble.py`: in an experiment directory, or a two-stage search's
directory over both stages) one more, of status "ensemble", its members and weights in the
`members` column. Neither is a trial of the search (`trial_rows`).

Status: "terminated" (a final report exists), "errored" (Ray says ERROR, or error.txt and no final
report), "stopped early" (Ray says TERMINATED, no final report: the scheduler stopped it),
"running" / "pending" / "paused" as Ray's state says (a killed driver leaves "running"),
"lost" (no entry in the experiment's saved state, no final report: a trial the driver
started after Tune's last snapshot before it was killed; `--resume` runs its point again as a
new trial), "unknown" (no state saved at all, no final report).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.metrics import is_metric_column
from hiersearch.report.baseline import STATUS_BASELINE, read_baseline
from hiersearch.report.ensemble import MODES, STATUS_ENSEMBLE, read_ensemble_file
from hiersearch.report.experiment import META_FILE, open_location, read_meta, read_text

STATUS_TERMINATED = "terminated"
STATUS_STOPPED_EARLY = "stopped early"
STATUS_ERRORED = "errored"
STATUS_RUNNING = "running"
STATUS_PENDING = "pending"
STATUS_PAUSED = "paused"
STATUS_LOST = "lost"
STATUS_UNKNOWN = "unknown"

ID_COLUMNS = (
    "experiment",
    "trial_id",
    "status",
    "error",
    "variant",
    "assignment",
    "stop_reason",
    "best_epoch",
    "epochs",
    "time_s",
    "node_id",
    "checkpoint",
)

# The stage of a two-stage search a row belongs to ("screen", "finetune"), after `experiment`;
# only in tables that hold one.
STAGE_COLUMN = "stage"

# An ensemble row's members and weights (`Ensemble.describe`), after `checkpoint`; only in
# tables that hold one.
MEMBERS_COLUMN = "members"
# Rows that are no trial of the search: never counted, ranked or exported as one.
NOT_TRIALS = (STATUS_BASELINE, STATUS_ENSEMBLE)

# TrialConfig fields every trial shows even when fixed: they decide what a head can learn
HEAD_OPTION_COLUMNS = ("pooling", "head_norm", "head_hidden", "freeze_layers")

# result.json keys that become identity columns
_RESULT_IDS = {
    M.TRIAL_VARIANT: "variant",
    M.TRIAL_ASSIGNMENT: "assignment",
    M.TRIAL_STOP_REASON: "stop_reason",
    M.TRIAL_BEST_EPOCH: "best_epoch",
    M.TRIAL_NODE_ID: "node_id",
}
_RAY_STATUS = {"RUNNING": STATUS_RUNNING, "PENDING": STATUS_PENDING, "PAUSED": STATUS_PAUSED}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LeaderboardWarning(UserWarning):
    """A damaged file was skipped (the message names it); the rest of the table stands."""


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if is_metric_column(c) and pd.api.types.is_numeric_dtype(df[c])]


def param_columns(df: pd.DataFrame) -> list[str]:
    return [
        c
        for c in df.columns
        if c not in (*ID_COLUMNS, MEMBERS_COLUMN)
        and not is_metric_column(c)
        and not c.startswith("trial/")
    ]


def trial_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that are trials of the search: not the baseline's, not the ensemble's."""
    return df[~df["status"].isin(NOT_TRIALS)] if "status" in df.columns else df


class _Store:
    """One experiment directory, local or behind a URI, read through pyarrow.fs."""

    def __init__(self, location: str) -> None:
        import pyarrow.fs as pafs

        self.location = location.rstrip("/")
        self._pafs = pafs
        self.fs, self.root = open_location(location)

    def where(self, *parts: str) -> str:
        return "/".join([self.location, *parts])

    def is_dir(self, *parts: str) -> bool:
        info = self.fs.get_file_info("/".join([self.root, *parts]))
        return info.type == self._pafs.FileType.Directory

    def entries(self, *parts: str) -> dict[str, bool]:
        """Names in a directory -> whether each is a directory."""
        selector = self._pafs.FileSelector("/".join([self.root, *parts]), allow_not_found=True)
        return {
            i.base_name: i.type == self._pafs.FileType.Directory
            for i in self.fs.get_file_info(selector)
        }

    def read(self, *parts: str) -> str | None:
        return read_text(self.fs, "/".join([self.root, *parts]))


def _warn(where: str, what: str) -> None:
    warnings.warn(f"{where}: {what}", LeaderboardWarning, stacklevel=3)


def _read_state(store: _Store, names: dict[str, bool]) -> dict[str, dict[str, Any]]:
    """relative_logdir -> {trial_id, status, config} from the newest experiment_state file."""
    states = sorted(n for n in names if n.startswith("experiment_state-") and n.endswith(".json"))
    if not states:
        return {}
    try:
        data = json.loads(store.read(states[-1]) or "")
        trials = {}
        for trial_text, runtime_text in data["trial_data"]:
            trial, runtime = json.loads(trial_text), json.loads(runtime_text)
            trials[trial["relative_logdir"]] = {
                "trial_id": trial["trial_id"],
                "status": trial["status"],
                "config": trial.get("config") or {},
                "last": runtime.get("last_result") or {},
            }
        return trials
    except (ValueError, KeyError, TypeError):
        _warn(store.where(states[-1]), "not a readable experiment state, skipped")
        return {}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _read_results(store: _Store, trial_dir: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate((store.read(trial_dir, "result.json") or "").splitlines(), 1):
        if line.strip() and (row := _json_object(line)) is None:
            _warn(store.where(trial_dir, "result.json"), f"line {number}: not JSON, skipped")
        elif line.strip():
            rows.append(row)
    return rows


def _read_params(store: _Store, trial_dir: str, fallback: dict[str, Any]) -> dict[str, Any]:
    text = store.read(trial_dir, "params.json")
    if text is not None and (params := _json_object(text)) is None:
        _warn(store.where(trial_dir, "params.json"), "not JSON, skipped")
    return fallback if text is None or params is None else params


def _head_options(
    store: _Store, trial_dir: str, params: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    """The trial's head options: its config.json, else the base config under its params (a
    trial that has not started yet); only the options the source holds."""
    text = store.read(trial_dir, "config.json") if trial_dir else None
    config = _json_object(text) if text is not None else None
    if text is not None and config is None:
        _warn(store.where(trial_dir, "config.json"), "not JSON, skipped")
    resolved = config if config is not None else {**base, **params}
    return {key: resolved[key] for key in HEAD_OPTION_COLUMNS if key in resolved}


def error_line(text: str) -> str | None:
    """The exception line of a Ray error.txt: the first line after the innermost frame."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    for line in lines[frames[-1] + 1 :] if frames else []:
        if line and not line[0].isspace():
            return line
    # no traceback: the first line that is not Ray's "Failure # 1 (occurred at ...)" header
    return next(
        (ln.strip() for ln in lines if ln.strip() and not ln.startswith("Failure #")), None
    )


# What a trial's final checkpoint holds: trial/checkpoint.py's format, named again here as
# report/ cannot import trial/ (tests/trial/test_checkpoint.py holds the two equal)
FINAL_CHECKPOINT_FILES = frozenset({"model.pt", "final_metrics.json", "config.json"})


def _final_checkpoint(store: _Store, trial_dir: str) -> str | None:
    """The newest checkpoint of a trial holding its final report, as a path or URI. A one-worker
    trial checkpoints through Tune (in the trial directory), a Ray Train run in `train_*/`;
    both name checkpoints so that their order is the order of their names."""
    found: list[tuple[str, ...]] = []
    for name, is_dir in store.entries(trial_dir).items():
        if is_dir and name.startswith("checkpoint_"):
            found.append((name,))
        elif is_dir and name.startswith("train_"):
            found += [
                (name, sub)
                for sub, sub_dir in store.entries(trial_dir, name).items()
                if sub_dir and sub.startswith("checkpoint_")
            ]
    for parts in sorted(found, key=lambda p: p[-1], reverse=True):
        if set(store.entries(trial_dir, *parts)) >= FINAL_CHECKPOINT_FILES:
            return store.where(trial_dir, *parts)
    return None


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:  # lists become text so that every cell is hashable (group-by, paper_table)
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    scored = [(v, i) for i, row in enumerate(rows) if (v := _number(row.get(metric))) is not None]
    if not scored:
        return rows[-1] if rows else {}
    if mode == "max":  # ties: the earliest report
        return rows[max(scored, key=lambda s: (s[0], -s[1]))[1]]
    return rows[min(scored)[1]]


def _status(ray_status: str | None, final: bool, has_error: bool, lost: bool) -> str:
    if ray_status == "ERROR" or (has_error and not final):
        return STATUS_ERRORED
    if final:
        return STATUS_TERMINATED
    if ray_status == "TERMINATED":
        return STATUS_STOPPED_EARLY
    if lost:
        return STATUS_LOST
    return _RAY_STATUS.get(ray_status or "", STATUS_UNKNOWN)


def _trial_row(
    store: _Store,
    trial_dir: str,
    state: dict[str, Any] | None,
    ranking: tuple[str, str],
    base: dict[str, Any],
    lost: bool = False,
) -> dict[str, Any]:
    """`ranking`: the experiment's (metric, mode); `base`: its base config (hiersearch.json);
    `lost`: the experiment's saved state has no entry for the trial."""
    state = state or {}
    metric, mode = ranking
    rows = _read_results(store, trial_dir) if trial_dir else []
    last = rows[-1] if rows else dict(state.get("last") or {})
    final = last.get(M.TRIAL_STOP_REASON) is not None
    chosen = dict(last)
    if not final:  # train/ and dev/ from the best report; see the module docstring
        per_epoch = ("train", "dev")
        chosen = {k: v for k, v in last.items() if k.partition("/")[0] not in per_epoch}
        chosen.update(
            (k, v)
            for k, v in _best_row(rows, metric, mode).items()
            if k.partition("/")[0] in per_epoch
        )
    error_text = store.read(trial_dir, "error.txt") if trial_dir else None
    match = re.search(r"_([0-9a-f]+_\d{5})_", trial_dir)
    row: dict[str, Any] = {
        "trial_id": state.get("trial_id")
        or last.get("trial_id")
        or (match.group(1) if match else trial_dir),
        "status": _status(state.get("status"), final, error_text is not None, lost),
        "error": error_line(error_text) if error_text else None,
        "epochs": last.get("epoch", last.get("training_iteration")),
        "time_s": _number(last.get("time_total_s")),
        "checkpoint": _final_checkpoint(store, trial_dir) if final and trial_dir else None,
    }
    for key, value in chosen.items():
        if key in _RESULT_IDS:
            row[_RESULT_IDS[key]] = value
        elif "/" in key and not isinstance(value, (dict, list)):
            row[key] = value
    config = state.get("config") or {}
    params = _read_params(store, trial_dir, config) if trial_dir else config
    for key, value in _flatten(params).items():
        clash = key in ID_COLUMNS or is_metric_column(key) or key.startswith("trial/")
        name = f"param/{key}" if clash else key
        row[name] = value
    row.update(_head_options(store, trial_dir, params, base))
    if row.get("variant") is None and row.get("assignment") == "FLAT":
        row["variant"] = "FLAT"  # FLAT is a named variant however the trainer labels it
    elif M.TRIAL_VARIANT not in chosen and isinstance(params.get("variant"), str):
        row["variant"] = params["variant"]  # a trial that never reported: its config says
    return row


# A directory holding one of them is a trial directory
_TRIAL_FILES = frozenset({"params.json", "result.json", "error.txt"})
_NO_EXPERIMENT = (
    "holds no Ray Tune experiment (no experiment_state-*.json and no trial directories)"
)


def _listing(store: _Store, location: str) -> dict[str, bool]:
    try:
        if not store.is_dir():
            raise InputError("no such experiment directory", where=location)
        return store.entries()
    except OSError as exc:  # unreachable bucket, no permission
        raise InputError(f"cannot list: {exc}", where=location) from None


def _holds_experiment(store: _Store, names: dict[str, bool], *parts: str) -> bool:
    """Whether the directory `parts` (listed as `names`) is an experiment: a Tune state file or a
    trial directory in it."""
    if any(n.startswith("experiment_state-") and n.endswith(".json") for n in names):
        return True
    return any(
        is_dir and _TRIAL_FILES & set(store.entries(*parts, n)) for n, is_dir in names.items()
    )


def experiment_locations(location: str) -> list[str]:
    """`location` if it is an experiment directory; else (a storage root) every experiment
    directory directly in it, in name order. Neither is an InputError naming `location`."""
    store = _Store(location)
    names = _listing(store, location)
    if _holds_experiment(store, names):
        return [location]
    found = [
        store.where(name)
        for name, is_dir in sorted(names.items())
        if is_dir and _holds_experiment(store, store.entries(name), name)
    ]
    if not found:
        raise InputError(f"{_NO_EXPERIMENT}, nor does any directory in it", where=location)
    return found


def _load_one(location: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    store = _Store(location)
    names = _listing(store, location)
    meta = _read_meta(store, names)
    metric = meta.get("metric") or M.DEFAULT_METRIC
    mode = meta.get("mode") if meta.get("mode") in ("max", "min") else M.DEFAULT_MODE
    base = meta.get("base_config") if isinstance(meta.get("base_config"), dict) else {}
    trial_dirs = [
        n
        for n, is_dir in sorted(names.items())
        if is_dir and _TRIAL_FILES & set(store.entries(n))
    ]
    state = _read_state(store, names)
    if not state and not trial_dirs:
        raise InputError(_NO_EXPERIMENT, where=location)
    experiment = meta.get("name") or os.path.basename(store.location) or store.location
    # a stage of a two-stage search (search/stages.py) says which
    who = {"experiment": experiment, **({"stage": meta["stage"]} if meta.get("stage") else {})}
    rows = []
    for trial_dir in sorted(set(trial_dirs) | set(state)):
        present = trial_dir if trial_dir in trial_dirs else ""  # pending trials have no dir yet
        lost = bool(state) and trial_dir not in state
        entry = state.get(trial_dir)
        rows.append({**who, **_trial_row(store, present, entry, (metric, mode), base, lost)})
    baseline = read_baseline(location)
    if baseline is not None:
        rows.append({**who, **baseline_row(baseline)})
    objectives = _objectives(meta)
    return rows, {"metric": metric, "mode": mode, "objectives": objectives}


def _one_baseline_per_corpus(df: pd.DataFrame) -> pd.DataFrame:
    """The stages of a two-stage search each hold the same baseline (one corpus): one row."""
    if df.empty or STAGE_COLUMN not in df.columns:
        return df
    baseline = df["status"] == STATUS_BASELINE
    metrics = [c for c in df.columns if is_metric_column(c)]
    repeated = baseline & df[["variant", *metrics]].astype(str).duplicated(keep="first")
    return df[~repeated].reset_index(drop=True)


def baseline_row(baseline: dict[str, Any]) -> dict[str, Any]:
    """The row of an experiment's `baseline.json`: status "baseline", no checkpoint (never
    the best trial, never exported), its metrics under the trials' keys."""
    metrics = {
        key: float(value)
        for key, value in baseline["metrics"].items()
        if is_metric_column(key) and isinstance(value, (int, float))
    }
    return {
        "trial_id": STATUS_BASELINE,
        "status": STATUS_BASELINE,
        "variant": str(baseline.get("name") or STATUS_BASELINE),
        **metrics,
    }


def ensemble_row(location: str) -> dict[str, Any] | None:
    """The row of the ensemble fitted in `location` (`ensemble.json`): status "ensemble", no
    checkpoint, its members and weights in `members`; None when there is none (a damaged
    file is warned about and left out)."""
    try:
        fitted = read_ensemble_file(location)
    except InputError as exc:
        _warn(exc.where or location, f"{exc.message}, skipped")
        return None
    if fitted is None:
        return None
    ensemble = fitted.ensemble
    others = ", ".join(
        f"{mode} {100 * e.metrics.get(M.rp_macro_key('test'), math.nan):.1f}"
        for mode, e in fitted.ensembles.items() if mode != fitted.served and mode in MODES
    )
    return {
        "experiment": os.path.basename(location.rstrip("/")) or location,
        "trial_id": STATUS_ENSEMBLE,
        "status": STATUS_ENSEMBLE,
        "variant": f"ensemble of {len(ensemble.used())} ({ensemble.mode.replace('_', ' ')})",
        MEMBERS_COLUMN: ensemble.describe() + (f" [test macro: {others}]" if others else ""),
        **{k: v for k, v in ensemble.metrics.items() if is_metric_column(k)},
    }


def _objectives(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, mode) of every metric a multi-objective search optimized; [] for one metric."""
    metrics, modes = meta.get("metrics"), meta.get("modes")
    if not isinstance(metrics, list) or not isinstance(modes, list) or len(metrics) < 2:
        return []
    if len(metrics) != len(modes) or not all(m in ("max", "min") for m in modes):
        return []
    return [(str(k), str(m)) for k, m in zip(metrics, modes, strict=True)]


def _read_meta(store: _Store, names: dict[str, bool]) -> dict[str, Any]:
    """hiersearch.json, or {} (with a warning when it is there but damaged): the table
    stands without it."""
    try:
        meta = read_meta(store.location) if META_FILE in names else None
    except InputError as exc:
        _warn(exc.where or store.where(META_FILE), f"{exc.message}, ignored")
        return {}
    if meta is None and META_FILE in names:
        _warn(store.where(META_FILE), "cannot be read, ignored")
    return meta or {}


def _metric_order(column: str) -> tuple[int, int, int, str]:
    split, _, name = column.partition("/")
    level = re.fullmatch(r"rp_L(\d+)", name)
    family = 0 if level else {"rp_micro": 1, "rp_macro": 2}.get(name, 3)
    return M.METRIC_NAMESPACES.index(split), family, int(level.group(1)) if level else 0, name


def load_experiments(dirs: Sequence[str]) -> pd.DataFrame:
    """One row per trial across all `dirs` (experiment directories or storage roots); see the
    module docstring for columns and status."""
    if not dirs:
        raise InputError("give at least one experiment directory", where="leaderboard")
    rows: list[dict[str, Any]] = []
    attrs: dict[str, Any] = {}
    locations = [found for location in dirs for found in experiment_locations(str(location))]
    for location in locations:
        found, meta = _load_one(location)
        rows.extend(found)
        # the first experiment's metric decides the default sort; the first that searched
        # several metrics, the Pareto front's
        attrs = attrs or meta
        attrs["objectives"] = attrs.get("objectives") or meta.get("objectives") or []
    for location in dict.fromkeys(str(d).rstrip("/") for d in [*dirs, *locations]):
        if (row := ensemble_row(location)) is not None:
            rows.append(row)
    df = _one_baseline_per_corpus(pd.DataFrame.from_records(rows))
    for column in ID_COLUMNS:
        if column not in df.columns:
            df[column] = None
    ids = [*ID_COLUMNS[:1], *([STAGE_COLUMN] if STAGE_COLUMN in df.columns else []),
           *ID_COLUMNS[1:], *([MEMBERS_COLUMN] if MEMBERS_COLUMN in df.columns else [])]
    columns = list(df.columns)
    metrics = sorted((c for c in columns if is_metric_column(c)), key=_metric_order)
    others = [c for c in columns if c not in ids and not is_metric_column(c)]
    trial_keys = [c for c in others if c.startswith("trial/")]
    params = [c for c in others if not c.startswith("trial/")]
    df = df[[*ids, *metrics, *trial_keys, *params]]
    for column in ("best_epoch", "epochs", *params):  # 8, not 8.0000, when a cell is missing
        values = [r[column] for r in rows if r.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            df[column] = df[column].astype("Int64")
    df.attrs.update(attrs)
    return df
