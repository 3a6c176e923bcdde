"""A resumed experiment whose saved state names a checkpoint Tune has since deleted.

Tune prunes a trial's older checkpoints as soon as it registers a new one, but saves the
experiment state (which names each trial's latest checkpoint) at most every 10 s. A driver
killed in between (kill -9, a lost head node) leaves a state naming a deleted checkpoint;
`--resume` then fails that trial ("Could not recover from checkpoint as it does not exist on
storage anymore"), on every retry. The checkpoint that replaced it is still beside it:
`PrunedCheckpointRepair` points the trial at it before Tune starts the trial. Imported by the
search driver (it imports Ray).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray.tune import Callback

from hiersearch.report.experiment import read_text

__all__ = ["PrunedCheckpointRepair", "repair_trial"]

logger = logging.getLogger(__name__)

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
