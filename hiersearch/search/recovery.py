"""A resumed experiment whose saved state names a checkpoint Tune has since deleted.

Tune prunes a trial's older checkpoints as soon as it registers a new one, but saves the
experiment state (which names each trial's latest checkpoint) at most every 10 s. A driver
killed in between (kill -9, a lost head node) leaves a state naming a deleted checkpoint;
`--resume` then fails that trial ("Could not recover from checkpoint as it does not exist on
storage anymore"), on every retry. The checkpoint that replaced it is still beside it:
`PrunedCheckpointRepair` points the trial at it before Tune starts the trial.

Tune also copies its state files into the experiment directory in place, so a driver killed
during the copy leaves one cut short; `check_saved_state` says so before Ray starts, instead of
Tune's traceback after. Imported by search/run.py and search/tuner.py (it imports Ray).
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import json
import logging
import os
import pickletools
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

from hiersearch.errors import InputError
from hiersearch.report.experiment import open_location, read_text

__all__ = ["PrunedCheckpointRepair", "check_saved_state", "repair_trial"]

logger = logging.getLogger(__name__)

# Tune's state files in an experiment directory (one of each per driver session, named by its
# start time): the newest of each is what a resume reads. The experiment state is JSON, the
# other two are pickles (search_gen_state too, despite its suffix)
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")

# Tune's and Train's checkpoint directories: `checkpoint_000012`, `checkpoint_<date>`, both
# sorting by age.
CHECKPOINT_PREFIX = "checkpoint_"


class PrunedCheckpointRepair(Callback):
    """At a resumed experiment's first step, before any trial starts: each trial whose
    latest checkpoint is gone goes on from the newer one that replaced it (`repair_trial`).
    Part of the run config, so that Tune restores it with the experiment."""

    def __init__(self) -> None:
        self._checked = False  # pickled with the run config before any step: False on resume

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._checked:
            return
        self._checked = True
        for trial in trials:
            repair_trial(trial)


def repair_trial(trial: Any) -> bool:
    """Point `trial` at its newest checkpoint when the latest it knows of is gone; whether
    it did. Entries for deleted checkpoints leave Tune's bookkeeping (Tune would fail to
    delete them again); the newest is registered with the metrics reported with it, read
    from the trial's result.json."""
    import pyarrow.fs

    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    if latest is None or latest.checkpoint is None or _exists(latest.checkpoint):
        return False
    checkpoint = latest.checkpoint
    filesystem, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, _, name = path.rpartition("/")
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    newer = sorted(
        info.base_name
        for info in found
        if info.type == pyarrow.fs.FileType.Directory
        and info.base_name.startswith(CHECKPOINT_PREFIX)
        and info.base_name > name
    )
    if not newer:
        return False  # nothing to go on from: Tune's own error names the missing one
    successor = type(checkpoint)(f"{parent}/{newer[-1]}", filesystem)
    metrics = _reported_with(filesystem, parent, newer[-1]) or latest.metrics
    manager._checkpoint_results = [r for r in manager._checkpoint_results if _exists(r.checkpoint)]
    manager.register_checkpoint(type(latest)(checkpoint=successor, metrics=metrics))
    logger.warning(
        "trial %s: its saved state names checkpoint %s, which Tune had deleted; it goes on "
        "from %s, the checkpoint that replaced it",
        trial.trial_id,
        name,
        newer[-1],
    )
    return True


def _exists(checkpoint: Any) -> bool:
    import pyarrow.fs

    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type != pyarrow.fs.FileType.NotFound


def _reported_with(filesystem: Any, trial_path: str, name: str) -> dict[str, Any] | None:
    """The result the trial reported with checkpoint `name` (Tune's result.json rows name
    theirs as `checkpoint_dir_name`)."""
    text = read_text(filesystem, f"{trial_path}/result.json") or ""
    for line in reversed(text.splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a row cut short by the kill
        if isinstance(row, dict) and row.get("checkpoint_dir_name") == name:
            return row
    return None


def check_saved_state(experiment: str) -> None:
    """An InputError naming the newest of Tune's state files (`STATE_FILES`) that is cut
    short: the driver was killed while Tune copied it into the experiment directory. A whole
    copy may still be in Ray's staging directory on the driver's machine: the message names
    it."""
    import pyarrow.fs

    filesystem, path = open_location(experiment)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    names = [info.base_name for info in found if info.type == pyarrow.fs.FileType.File]
    for pattern in STATE_FILES:
        matching = fnmatch.filter(names, pattern)
        if not matching:
            continue
        newest = max(matching)  # as Tune picks it
        where = f"{experiment.rstrip('/')}/{newest}"
        try:
            with filesystem.open_input_stream(f"{path}/{newest}") as stream:
                data = stream.read()
        except OSError as exc:
            raise InputError.from_os_error(exc, where, "cannot read") from None
        if _whole(newest, data):
            continue
        copy = _whole_staged_copy(Path(path).name, newest)
        hint = (
            f"a whole copy is in Ray's staging directory: {copy}; copy it over this file"
            if copy
            else "no whole copy was found in Ray's staging directory on this machine"
        )
        raise InputError(
            f"Ray Tune's saved state is cut short ({len(data)} bytes): the driver was killed "
            f"while Tune wrote it, and --resume cannot read it; {hint}, then --resume again",
            where=where,
        )


def _whole(name: str, data: bytes) -> bool:
    """Whether the experiment state (JSON) parses, or a pickle (the other two, whatever their
    suffix) runs to its STOP opcode (read, never run)."""
    try:
        if name.startswith("experiment_state-"):
            json.loads(data)
        else:
            collections.deque(pickletools.genops(data), maxlen=0)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _whole_staged_copy(experiment_name: str, name: str) -> Path | None:
    """The newest whole copy of state file `name` in Ray's driver staging directories on this
    machine: Tune writes each state file there before copying it to the experiment
    directory."""
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    pattern = f"session_*/artifacts/*/{experiment_name}/driver_artifacts/{name}"
    whole = []
    for copy in root.glob(pattern):
        with contextlib.suppress(OSError):  # a session Ray is cleaning up
            if _whole(name, copy.read_bytes()):
                whole.append((copy.stat().st_mtime, copy))
    return max(whole)[1] if whole else None
