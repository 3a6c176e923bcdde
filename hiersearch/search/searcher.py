"""Ray Tune's OptunaSearch over a study that outlives the driver (an RDB study: SQLite in the
experiment directory or `--study-storage`).

Imported by the search driver when it builds a searcher (it imports Ray).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

__all__ = ["PersistentOptunaSearch"]

logger = logging.getLogger(__name__)


class PersistentOptunaSearch(OptunaSearch):
    """OptunaSearch whose study is kept in a database.

    A resumed experiment restores the searcher saved with Tune's last snapshot. The database
    may have recorded a trial's end after that snapshot, while the restored searcher still
    takes it for running. Tune then hands it that trial's reports again, and Optuna refuses
    to update a finished trial. Ray's OptunaSearch already logs and goes on when that happens
    at a trial's completion; here it also goes on for an epoch's report."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.info("trial %s: its Optuna trial was finished before the resume", trial_id)
